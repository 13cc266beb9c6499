"""Sequence classification: CSV or JSONL rows with a text (and optional pair) column and a label.

Labels are strings or integers, any number of classes; the label set is the training split's, in
sorted order (integers numerically), and is saved in the model's config (id2label). Scores:
accuracy and macro-F1 (scikit-learn).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.finetune.source import FinetuneInputError


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    pair: str | None = None
    label: str = "label"


@dataclass
class Rows:
    """One split: texts, optional pair texts and raw labels, with the line each came from."""

    where: str
    texts: list[str]
    pairs: list[str] | None
    labels: list[str]
    lines: list[int]


def read_rows(path: Path, where: str, columns: Columns) -> Rows:
    records = _jsonl(path, where) if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else _csv(path, where)
    if not records:
        raise FinetuneInputError(f"{where}: the split is empty (no rows); a classification split needs at least "
                                 "one row with a text and a label")
    wanted = [c for c in (columns.text, columns.pair, columns.label) if c]
    for line, record in records:
        absent = [c for c in wanted if c not in record or record[c] is None]
        if absent:
            raise FinetuneInputError(_missing_column(where, line, absent[0], sorted(record), columns))
    return Rows(where, [str(r[columns.text]) for _, r in records],
                [str(r[columns.pair]) for _, r in records] if columns.pair else None,
                [_label_text(r[columns.label]) for _, r in records], [line for line, _ in records])


def _missing_column(where: str, line: int, column: str, present: list[str], columns: Columns) -> str:
    option = {columns.text: "--text-column", columns.pair: "--text-pair-column", columns.label: "--label-column"}
    return (f"{where} line {line}: no column '{column}' (the row has {present}); name the right one with "
            f"{option[column]}")


def _label_text(value) -> str:
    return str(value).strip() if not isinstance(value, bool) else str(value).lower()


def _csv(path: Path, where: str) -> list[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = []
        for record in reader:
            rows.append((reader.line_num, {k: v for k, v in record.items() if k is not None}))
    return rows


def _jsonl(path: Path, where: str) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise FinetuneInputError(f"{where} line {number}: not a JSON object ({exc}); JSONL holds one "
                                         "object per line") from None
            if not isinstance(record, dict):
                raise FinetuneInputError(f"{where} line {number}: a JSON {type(record).__name__}, not an object; "
                                         "JSONL holds one object per line")
            rows.append((number, record))
    return rows


def label_names(train: Rows) -> list[str]:
    """The classes, sorted: numerically when every label is an integer, else as text."""
    names = set(train.labels)
    if all(_is_int(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def label_ids(rows: Rows, names: list[str]) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    for label, line in zip(rows.labels, rows.lines):
        if label not in index:
            raise FinetuneInputError(f"{rows.where} line {line}: label '{label}' does not occur in the training "
                                     f"split (its labels: {names[:20]}); add examples of it to the training "
                                     "split or drop the row")
    return [index[label] for label in rows.labels]


def encode(tokenizer, rows: Rows, ids: list[int], max_length: int) -> list[dict]:
    pairs = rows.pairs if rows.pairs is not None else None
    enc = tokenizer(rows.texts, pairs, truncation=True, max_length=max_length)
    return [{**{k: enc[k][i] for k in enc.keys()}, "labels": ids[i]} for i in range(len(ids))]


def scores(predictions: list[int], gold: list[int]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(gold, predictions)),
            "macro_f1": float(f1_score(gold, predictions, average="macro", zero_division=0))}
