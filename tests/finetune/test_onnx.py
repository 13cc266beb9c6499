"""`bertctl export --format onnx`: the encoder of a checkpoint and a fine-tuned task model, with dynamic batch
and sequence axes, run by onnxruntime on CPU against PyTorch on real inputs (max abs difference <= 1e-4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.finetune.test_finetune import run_finetune

# Real inputs: sentences of other lengths and another batch size than the ones the export traced.
TEXTS = ["john visited paris and mary works at acme corp", "the film was boring", "berlin",
         "who won the cup when the team played in london"]


def _export(source: str, output) -> str:
    result = CliRunner().invoke(app, ["export", source, "--output", str(output), "--format", "onnx"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def _parity(onnx_dir, reference, outputs: tuple[str, ...]) -> float:
    import onnxruntime
    import torch
    from transformers import AutoTokenizer

    session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"]] * 3  # dynamic axes, by name
    assert [o.name for o in session.get_outputs()] == list(outputs)
    tokenizer = AutoTokenizer.from_pretrained(str(onnx_dir))
    worst = 0.0
    for batch in (TEXTS, TEXTS[:1], TEXTS[1:]):
        feed = tokenizer(batch, padding=True, return_tensors="np")
        got = session.run(None, {k: feed[k].astype(np.int64) for k in ("input_ids", "attention_mask",
                                                                        "token_type_ids")})
        with torch.no_grad():
            want = reference(**{k: torch.tensor(v) for k, v in feed.items()})
        for name, value in zip(outputs, got):
            assert value.shape == tuple(want[name].shape)
            worst = max(worst, float(np.abs(value - want[name].numpy()).max()))
    return worst


def test_the_encoder_of_a_checkpoint_exports_to_onnx(checkpoint, exported, tmp_path):
    from transformers import AutoModel

    printed = _export(checkpoint, tmp_path / "onnx")
    assert "encoder" in printed and "max abs diff" in printed
    reference = AutoModel.from_pretrained(str(exported), add_pooling_layer=False).eval()
    assert _parity(tmp_path / "onnx", reference, ("last_hidden_state",)) <= 1e-4


@pytest.mark.parametrize("task, head, outputs", [
    ("token-classification", "AutoModelForTokenClassification", ("logits",)),
    ("question-answering", "AutoModelForQuestionAnswering", ("start_logits", "end_logits")),
])
def test_a_fine_tuned_model_exports_with_its_head(task, head, outputs, exported, data, tmp_path):
    import transformers

    run_finetune(str(exported), task, *map(str, data[task]), tmp_path / "tuned")
    _export(str(tmp_path / "tuned"), tmp_path / "onnx")
    reference = getattr(transformers, head).from_pretrained(str(tmp_path / "tuned")).eval()
    assert _parity(tmp_path / "onnx", reference, outputs) <= 1e-4
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["architectures"] == [reference.__class__.__name__]
