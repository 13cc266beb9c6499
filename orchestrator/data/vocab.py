"""The WordPiece vocabulary: trained with ``tokenizers`` or loaded from a given vocab.txt.

Files live under ``<shards>/tokenizer/`` (``vocab.txt`` + ``tokenizer.json``) so the trainer and
``bertctl export`` build the same tokenizer the shards were made with.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from orchestrator.data.index import SPECIAL_TOKENS
from orchestrator.errors import DataError
from orchestrator.storage import join, storage_for

VOCAB_FILE = "tokenizer/vocab.txt"
TOKENIZER_FILE = "tokenizer/tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int, lowercase: bool) -> BertWordPieceTokenizer:
    tok = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase)
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                            show_progress=False, limit_alphabet=1000)
    return tok


def load_vocab(vocab_uri: str, lowercase: bool) -> BertWordPieceTokenizer:
    text = storage_for(vocab_uri).read_bytes(vocab_uri).decode("utf-8")
    vocab = {line.rstrip("\n"): i for i, line in enumerate(text.splitlines()) if line.strip()}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise DataError(f"{vocab_uri}: the vocabulary lacks special token(s) {missing}; a BERT vocab.txt "
                        f"needs {list(SPECIAL_TOKENS)}")
    return BertWordPieceTokenizer(vocab, lowercase=lowercase, strip_accents=lowercase)


def vocab_text(tok: BertWordPieceTokenizer) -> str:
    vocab = tok.get_vocab()
    return "".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]))


def save_tokenizer(tok: BertWordPieceTokenizer, shards_uri: str) -> tuple[dict[str, str], str]:
    """Write vocab.txt and tokenizer.json; return (files by role, sha256 of the tokenizer)."""
    vocab = vocab_text(tok).encode()
    spec = tok.to_str().encode()
    store = storage_for(shards_uri)
    store.write_bytes(join(shards_uri, VOCAB_FILE), vocab)
    store.write_bytes(join(shards_uri, TOKENIZER_FILE), spec)
    digest = hashlib.sha256(vocab + b"\0" + spec).hexdigest()
    return {"vocab": VOCAB_FILE, "tokenizer": TOKENIZER_FILE}, digest


def special_ids(tok: BertWordPieceTokenizer | Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def continuation_ids(vocab: dict[str, int]) -> list[int]:
    """Ids of '##' pieces: whole-word masking keeps them with the piece before."""
    return sorted(i for t, i in vocab.items() if t.startswith("##"))


def load_tokenizer_json(text: str) -> Tokenizer:
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises plain Exception on a bad file
        raise DataError(f"invalid tokenizer.json ({exc}); re-run `bertctl prepare`") from None

