"""Where fine-tuning starts: MODEL and the data files, made local, and the task head loaded from MODEL.

MODEL is an exported Hugging Face directory (local or s3://; it holds config.json) or a checkpoint
URI (local or s3://: its newest committed checkpoint, or one step-NNNNNNNN directory), which is
exported first with ``bertctl export``'s own code (verified, read as data only). Every problem a
user can fix is a ``FinetuneInputError`` naming the file or field and the fix (exit 2 in the CLI).
"""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator import storage as st
from orchestrator.errors import DataError, StorageError

log = logging.getLogger("bertctl.finetune")

CONFIG = "config.json"
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


class FinetuneInputError(DataError):
    """A fine-tuning input (model, tokenizer, data file) that cannot be used as given."""


def local_file(uri: str, scratch: Path) -> Path:
    """A data file given as a local path or s3:// URI, as a local path."""
    if not st.is_s3(uri):
        path = st.local_path(uri)
        if not path.is_file():
            raise FinetuneInputError(f"{uri}: no such file; pass an existing CSV/JSONL, CoNLL or JSON file "
                                     "(a local path or an s3:// URI)")
        return path
    dest = scratch / "data" / uri.rsplit("/", 1)[-1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        st.storage_for(uri).download_file(uri, str(dest))
    except StorageError as exc:
        raise FinetuneInputError(f"{uri}: cannot be read ({exc}); check the bucket, key and credentials") from None
    return dest


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized head" is the point of fine-tuning, not news
    hf_logging.disable_progress_bar()  # ours is the one bar


def local_model_dir(model: str, scratch: Path) -> Path:
    """MODEL as a local Hugging Face directory (downloaded or exported into ``scratch`` when needed)."""
    quiet_transformers()
    store = st.storage_for(model)
    uri = model.rstrip("/")
    if store.exists(st.join(uri, CONFIG)):
        if not st.is_s3(uri):
            return st.local_path(uri)
        return _download_dir(store, uri, scratch / "model")
    from orchestrator.train.export import export_checkpoint

    exported = export_checkpoint(uri, scratch / "model")
    log.info("fine-tuning from checkpoint step %d (%s)", exported.step, exported.source)
    return exported.output


def _download_dir(store: st.Storage, uri: str, dest: Path) -> Path:
    for name in store.list_files(uri + "/"):
        rel = name[len(uri) + 1:]
        if "/" in rel:  # only the directory's own files: an HF directory is flat
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        store.download_file(name, str(dest / rel))
    return dest


def load_tokenizer(model_dir: Path, where: str):
    """The fast tokenizer saved beside the model (it must fit the model's vocabulary), and the config."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FinetuneInputError(f"{where}: no usable tokenizer or config.json beside the model "
                                 f"({_first_line(exc)}); pass a directory written by `bertctl export` or "
                                 "`bertctl finetune`, or a checkpoint URI") from None
    if not tokenizer.is_fast:
        raise FinetuneInputError(f"{where}: the tokenizer is not a fast (Rust) tokenizer, which word and "
                                 "character offsets need; save a tokenizer.json beside the model")
    check_vocabulary(tokenizer, config, where)
    return tokenizer, config


def check_vocabulary(tokenizer, config, where: str) -> None:
    """A token id past the embedding table would crash mid-training: refuse the pair up front."""
    size = max(tokenizer.get_vocab().values()) + 1  # ids, not entries: a vocabulary may have gaps
    if size > config.vocab_size:
        raise FinetuneInputError(
            f"{where}: the tokenizer has token ids up to {size - 1} but the model's vocab_size (config.json) is "
            f"{config.vocab_size}: they were not saved together. Pass the directory `bertctl export` wrote "
            "(model and tokenizer of one checkpoint), or the checkpoint URI itself")
    missing = [t for t in SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)
               and t != "[UNK]"]
    if missing or tokenizer.unk_token_id is None:
        raise FinetuneInputError(f"{where}: the tokenizer lacks the special tokens {missing or ['[UNK]']}; "
                                 "a BERT vocabulary (vocab.txt) must hold [CLS], [SEP], [PAD] and [UNK]")


def load_head(auto_class, model_dir: Path, where: str, **config_fields):
    """The task head of ``auto_class`` on MODEL's encoder (a fresh head where MODEL has none)."""
    from safetensors import SafetensorError

    quiet_transformers()
    try:
        return auto_class.from_pretrained(str(model_dir), **config_fields)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        why = _first_line(exc)
        if "ignore_mismatched_sizes" in why:
            why = "its weights have other shapes than its config.json or than this task's labels need"
        raise FinetuneInputError(
            f"{where}: the {auto_class.__name__} head cannot load from this model ({why}). Pass an encoder "
            "exported by `bertctl export` (or a checkpoint URI), or a model fine-tuned for the same task with "
            "the same labels") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
