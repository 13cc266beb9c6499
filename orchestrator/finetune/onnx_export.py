"""``bertctl export --format onnx``: the encoder of a checkpoint, or a fine-tuned task model, as ONNX.

The source is a checkpoint URI (exported to a Hugging Face directory first) or a Hugging Face
directory. A pretraining model (masked LM) becomes its encoder: inputs input_ids, attention_mask,
token_type_ids; output last_hidden_state. A model fine-tuned by ``bertctl finetune`` keeps its head:
output ``logits`` (classification, token classification) or ``start_logits`` and ``end_logits``
(question answering). Batch and sequence axes are dynamic. torch's exporter (torch.export + onnxscript)
writes the graph; onnxruntime then runs it on CPU against PyTorch on the same inputs, and the
export fails when they differ by more than ``TOLERANCE``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import CheckpointError
from orchestrator.finetune.source import load_tokenizer, local_model_dir

log = logging.getLogger("bertctl.finetune.onnx")

ONNX_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOLERANCE = 1e-4
HEADS = {  # architecture -> (transformers class, output names)
    "BertForSequenceClassification": ("AutoModelForSequenceClassification", ("logits",)),
    "BertForTokenClassification": ("AutoModelForTokenClassification", ("logits",)),
    "BertForQuestionAnswering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits")),
}
ENCODER = ("AutoModel", ("last_hidden_state",))
CHECK_TEXTS = ["the encoder is checked on these sentences", "and on a second, longer one, so that the batch "
               "holds padding where the first sentence has ended"]


@dataclass(frozen=True)
class OnnxExported:
    output: Path
    kind: str
    outputs: tuple[str, ...]
    max_abs_diff: float


def _returning(model, names: tuple[str, ...]):
    """The model as a torch module returning the named outputs as a tuple (what the exporter traces)."""
    import torch

    class NamedOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return tuple(out[name] for name in names)

    return NamedOutputs().eval()


def _load(model_dir: Path):
    import transformers

    config = json.loads((model_dir / "config.json").read_text())
    architecture = (config.get("architectures") or [""])[0]
    class_name, names = HEADS.get(architecture, ENCODER)
    kwargs = {"add_pooling_layer": False} if class_name == "AutoModel" else {}
    # Eager attention traces into plain ONNX ops; its results equal the fused kernels' within TOLERANCE.
    model = getattr(transformers, class_name).from_pretrained(str(model_dir), attn_implementation="eager", **kwargs)
    return model.eval(), ("encoder" if class_name == "AutoModel" else architecture), names


def _sample(tokenizer, texts: list[str], framework: str):
    return tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors=framework)


def _export(model, names: tuple[str, ...], sample, target: Path) -> None:
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: sequence} for name in INPUTS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
        torch.onnx.export(_returning(model, names), tuple(sample[name] for name in INPUTS), str(target),
                          input_names=list(INPUTS), output_names=list(names), dynamic_shapes=shapes,
                          dynamo=True, optimize=True, verbose=False, external_data=_large(model))


def _large(model) -> bool:
    """Weights past ~1.5 GiB go to a .data file beside model.onnx (protobuf's 2 GiB limit); else one file."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30


def max_abs_difference(onnx_file: Path, model, names: tuple[str, ...], tokenizer, texts: list[str]) -> float:
    """onnxruntime (CPU) against PyTorch on ``texts``: the largest absolute difference of any output."""
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    feed = _sample(tokenizer, texts, "np")
    got = session.run(list(names), {name: feed[name].astype(np.int64) for name in INPUTS})
    with torch.no_grad():
        out = model(**{name: torch.tensor(feed[name]) for name in INPUTS})
    return max(float(np.abs(g - out[name].numpy()).max()) for g, name in zip(got, names))


def export_onnx(source: str, output: str | Path, texts: list[str] | None = None) -> OnnxExported:
    """Write ``output``/model.onnx (with the tokenizer and config beside it) from ``source``."""
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="bertctl-onnx-") as tmp:
        model_dir = local_model_dir(source, Path(tmp))
        tokenizer, _ = load_tokenizer(model_dir, source)
        model, kind, names = _load(model_dir)
        output.mkdir(parents=True, exist_ok=True)
        _export(model, names, _sample(tokenizer, CHECK_TEXTS, "pt"), output / ONNX_FILE)
        tokenizer.save_pretrained(str(output))
        shutil.copyfile(model_dir / "config.json", output / "config.json")
    diff = max_abs_difference(output / ONNX_FILE, model, names, tokenizer, texts or CHECK_TEXTS)
    if diff > TOLERANCE:
        raise CheckpointError(f"{output / ONNX_FILE}: onnxruntime differs from PyTorch by {diff:.2e} "
                              f"(> {TOLERANCE}); the export is not faithful: report it with the model's config.json")
    log.info("exported %s (%s) to %s; onnxruntime vs PyTorch max abs diff %.2e", source, kind, output, diff)
    return OnnxExported(output, kind, names, diff)
