"""Corpus inputs: plain text, JSONL and Parquet files or directories (local or s3://), and the
built-in real corpus ``builtin:python-stdlib-docs`` (the docstrings of the installed standard
library - real English prose that every machine already has offline).

An input is split into *units* (one per file, or one per group of stdlib modules); a unit is
the grain of parallelism and of restart in prepare, and its documents come in a fixed order.
"""

from __future__ import annotations

import ast
import io
import json
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from orchestrator.errors import DataError
from orchestrator.storage import storage_for

BUILTIN_STDLIB = "builtin:python-stdlib-docs"
STDLIB_PARTS = 8
_EXT_KIND = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl",
             ".parquet": "parquet"}
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Unit:
    kind: str          # text | jsonl | parquet | stdlib
    uri: str
    part: int = 0

    @property
    def label(self) -> str:
        return f"{self.uri}#{self.part}" if self.kind == "stdlib" else self.uri


def list_units(inputs: list[str]) -> list[Unit]:
    """Expand inputs (files, directories, the builtin source) into units, in a stable order."""
    units: list[Unit] = []
    for item in inputs:
        if item == BUILTIN_STDLIB:
            units += [Unit("stdlib", BUILTIN_STDLIB, p) for p in range(STDLIB_PARTS)]
        elif item.startswith("builtin:"):
            raise DataError(f"{item}: unknown built-in corpus; the only one is {BUILTIN_STDLIB}")
        else:
            units += _file_units(item)
    if not units:
        raise DataError(f"no input files found in {inputs}; pass text/JSONL/Parquet files or directories")
    return units


def _file_units(item: str) -> list[Unit]:
    store = storage_for(item)
    files = [f for f in store.list_files(item) if Path(f).suffix.lower() in _EXT_KIND
             and not Path(f).name.startswith((".", "_"))]
    if files and not _is_plain_file(item, files):
        return [Unit(_EXT_KIND[Path(f).suffix.lower()], f) for f in sorted(files)]
    if not store.exists(item):
        raise DataError(f"{item}: input not found; check the path (or the bucket and key for s3://)")
    return [Unit(_EXT_KIND.get(Path(item).suffix.lower(), "text"), item)]


def _is_plain_file(item: str, files: list[str]) -> bool:
    return files == [item]


def read_documents(unit: Unit, text_column: str = "text") -> Iterator[str]:
    """The documents of one unit, in order (empty documents are dropped)."""
    if unit.kind == "stdlib":
        yield from _stdlib_documents(unit.part)
        return
    data = storage_for(unit.uri).read_bytes(unit.uri)
    if unit.kind == "text":
        docs = re.split(r"\n\s*\n", data.decode("utf-8", errors="replace"))
    elif unit.kind == "jsonl":
        docs = _jsonl_texts(unit.uri, data, text_column)
    else:
        docs = _parquet_texts(unit.uri, data, text_column)
    for doc in docs:
        if doc and doc.strip():
            yield doc


def _jsonl_texts(uri: str, data: bytes, column: str) -> Iterator[str]:
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{uri}:{lineno}: not valid JSON ({exc}); fix or remove the line") from None
        if not isinstance(row, dict) or column not in row:
            raise DataError(f"{uri}:{lineno}: no field '{column}'; set --text-column to the text field")
        yield str(row[column] or "")


def _parquet_texts(uri: str, data: bytes, column: str) -> Iterator[str]:
    table = pq.read_table(io.BytesIO(data))
    if column not in table.column_names:
        raise DataError(f"{uri}: no column '{column}' (columns: {table.column_names}); set --text-column")
    for value in table.column(column).to_pylist():
        yield str(value or "")


def split_sentences(document: str) -> list[str]:
    """Paragraphs, then a punctuation rule: cheap, deterministic and good enough for NSP pairs."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", document):
        text = _SPACES.sub(" ", para).strip()
        if text:
            out += [s for s in _SENTENCE_END.split(text) if s]
    return out


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not (_SKIP_DIRS & set(p.relative_to(root).parts[:-1]))]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _stdlib_documents(part: int) -> Iterator[str]:
    files = stdlib_files()
    size = -(-len(files) // STDLIB_PARTS)
    for path in files[part * size:(part + 1) * size]:
        doc = module_docstrings(path)
        if doc:
            yield doc


def module_docstrings(path: Path) -> str:
    """All docstrings of one module (module, classes, functions) as one document."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return ""  # a few stdlib files are deliberately invalid (test data); they carry no prose
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds)]
    return "\n\n".join(d for d in docs if d and d.strip())


_PARA_BREAK = re.compile(r"\n[^\S\n]*\n")
_OPENERS = np.array([ord(c) for c in "\"'(["], dtype=np.uint32)
_ENDERS = np.array([ord(c) for c in ".!?"], dtype=np.uint32)


def sentence_starts(text: str, offsets: np.ndarray) -> np.ndarray:
    """Token indices where a new sentence begins, from token character offsets (the same rule as
    ``split_sentences``: a blank line, or [.!?] + whitespace + an uppercase letter, digit or opener).
    Working on offsets lets prepare tokenize whole documents, which is what keeps it fast."""
    if len(offsets) < 2:
        return np.zeros(0, dtype=np.int64)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    prev_end, next_start = offsets[:-1, 1], offsets[1:, 0]
    gap = next_start > prev_end
    nxt = codes[np.minimum(next_start, len(codes) - 1)]
    after = codes[np.minimum(next_start + 1, len(codes) - 1)]
    capital = lambda c: ((c >= 65) & (c <= 90)) | ((c >= 48) & (c <= 57))  # noqa: E731
    starts_sentence = capital(nxt) | (np.isin(nxt, _OPENERS) & capital(after))
    ends_sentence = np.isin(codes[np.maximum(prev_end - 1, 0)], _ENDERS)
    breaks = np.array([m.start() for m in _PARA_BREAK.finditer(text)], dtype=np.int64)
    paragraph = np.searchsorted(breaks, next_start) > np.searchsorted(breaks, prev_end)
    return np.flatnonzero(gap & ((ends_sentence & starts_sentence) | paragraph)) + 1
