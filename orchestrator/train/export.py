"""A committed checkpoint -> a Hugging Face model directory (``bertctl export``).

Runs on CPU without Ray or a GPU: the checkpoint is verified (manifest sha256s), its ZeRO
shards are consolidated into one fp32 state dict with DeepSpeed's ``zero_to_fp32`` utilities
(stage 0 reads the module states directly), loaded *strictly* into the same transformers class
that was trained, and written with ``save_pretrained`` (safetensors + config.json) next to the
tokenizer files saved with the checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator import storage as st
from orchestrator.errors import CheckpointError
from orchestrator.model import build_model
from orchestrator.train.checkpoint.store import DS_TAG, MANIFEST, CheckpointStore, Committed, TrainState
from orchestrator.train.worker.heads import unwrap_state_dict

log = logging.getLogger("bertctl.train.export")


@dataclass(frozen=True)
class Exported:
    output: Path
    step: int
    source: str
    parameters: int


def _select(uri: str, scratch: Path) -> tuple[CheckpointStore, Committed, Path]:
    """A step directory (it holds manifest.json) or a checkpoint root (its newest verified one)."""
    uri = uri.rstrip("/")
    store_for_uri = st.storage_for(uri)
    if store_for_uri.exists(st.join(uri, MANIFEST)):
        root, _, name = uri.rpartition("/")
        store = CheckpointStore(root or ".")
        ckpt = next((c for c in store.committed() if c.uri.rstrip("/").endswith(name)), None)
        if ckpt is None:
            raise CheckpointError(f"{uri}: manifest.json is unreadable; pass the checkpoint root to use "
                                  "the newest committed checkpoint instead")
        return store, ckpt, store.materialize(ckpt, scratch)
    store = CheckpointStore(uri)
    found = store.newest_verified(scratch)
    if found is None:
        raise CheckpointError(f"{uri}: no committed checkpoint that verifies; pass the checkpoint.uri of a "
                              "job that has saved at least one (or one of its step-NNNNNNNN directories)")
    return store, found[0], found[1]


def consolidated_state_dict(attempt_dir: Path, zero_stage: int) -> dict:
    """One fp32 state dict from the DeepSpeed files of every rank."""
    from orchestrator.train.checkpoint import safe_load

    # Read as data (weights_only); DeepSpeed's zero_to_fp32 unpickles in full, so the gate goes first.
    safe_load.check_tree(attempt_dir)
    if zero_stage == 0:
        states = safe_load.load(attempt_dir / DS_TAG / "mp_rank_00_model_states.pt")
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(attempt_dir), tag=DS_TAG)


def _lowercase(tokenizer_json: Path) -> bool:
    try:
        normalizer = json.loads(tokenizer_json.read_text()).get("normalizer") or {}
    except (OSError, ValueError):
        return True
    return bool(normalizer.get("lowercase", True))


def write_tokenizer(tok_dir: Path, output: Path, max_length: int) -> None:
    from transformers import BertTokenizerFast

    vocab = tok_dir / "vocab.txt"
    if not vocab.is_file():
        raise CheckpointError(f"{tok_dir}: the checkpoint holds no tokenizer vocab.txt; it was not written "
                              "by this version of bertctl")
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=_lowercase(tok_dir / "tokenizer.json"),
                            model_max_length=max_length)
    tok.save_pretrained(str(output))
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    (output / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")
    if not (output / "vocab.txt").is_file():
        shutil.copyfile(vocab, output / "vocab.txt")  # the plain WordPiece vocabulary, for any reader


def export_checkpoint(uri: str, output: str | Path) -> Exported:
    """Write the HF directory ``output`` from ``uri`` (a checkpoint root or one step directory)."""
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="bertctl-export-") as tmp:
        _, ckpt, local = _select(uri, Path(tmp))
        attempt_dir = local / ckpt.root
        state = TrainState.from_json((attempt_dir / "state.json").read_bytes())
        model = build_model(state.model_config, state.nsp)
        weights = unwrap_state_dict(consolidated_state_dict(attempt_dir, state.zero_stage))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not _tied(model, k)]
        if missing or unexpected:
            raise CheckpointError(f"checkpoint step {ckpt.step} does not match its model config "
                                  f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        model = _masked_lm(model) if state.nsp else model
        output.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(output), safe_serialization=True)
        write_tokenizer(attempt_dir / "tokenizer", output, state.model_config.get("max_position_embeddings", 512))
    params = sum(p.numel() for p in model.parameters())
    log.info("exported checkpoint step %d (%s) to %s", ckpt.step, ckpt.uri, output)
    return Exported(output=output, step=ckpt.step, source=ckpt.uri, parameters=params)


def _masked_lm(pretraining_model):
    """The BertForMaskedLM inside a BertForPreTraining (what AutoModelForMaskedLM and fill-mask load).

    The pooler and the NSP head have no place in a masked-LM directory; every other weight is
    copied strictly, so nothing is silently dropped.
    """
    from transformers import BertForMaskedLM

    mlm = BertForMaskedLM(pretraining_model.config)
    weights = {k: v for k, v in pretraining_model.state_dict().items()
               if not k.startswith(("bert.pooler.", "cls.seq_relationship."))}
    mlm.load_state_dict(weights, strict=True)
    mlm.config.architectures = ["BertForMaskedLM"]
    return mlm


def _tied(model, key: str) -> bool:
    """Keys that are tied to another parameter (the MLM decoder shares the word embeddings)."""
    return key.endswith("predictions.decoder.weight") or key.endswith("predictions.decoder.bias")
