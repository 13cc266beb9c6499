"""Token classification on CoNLL column files.

One token per line, its columns separated by whitespace, the token first and the tag in a chosen
column (the last by default); a blank line ends a sentence; ``-DOCSTART-`` lines are ignored.
Every line of a file has the column count of its first token line. IOB1/IOB2 entity tags are
scored at entity level with seqeval (IOB2 in its strict mode, IOB1 the conlleval way); any other
tag set (part of speech, chunks in another scheme) by token accuracy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.finetune.source import FinetuneInputError

IGNORED = -100  # the loss skips sub-word continuations and special tokens
_IOB = re.compile(r"^(O|[BI]-.+)$")


@dataclass
class Sentences:
    where: str
    tokens: list[list[str]]
    tags: list[list[str]]


def read_conll(path: Path, where: str, tag_column: int = -1) -> Sentences:
    tokens: list[list[str]] = [[]]
    tags: list[list[str]] = [[]]
    expected: tuple[int, int] | None = None  # (columns, first line with them)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if tokens[-1]:
                    tokens.append([])
                    tags.append([])
                continue
            expected = expected or (len(fields), number)
            _check_columns(where, number, fields, expected, tag_column)
            tokens[-1].append(fields[0])
            tags[-1].append(fields[tag_column])
    sentences = Sentences(where, [t for t in tokens if t], [t for t in tags if t])
    if not sentences.tokens:
        raise FinetuneInputError(f"{where}: the split is empty (no token lines); a CoNLL file holds one token per "
                                 "line with its tag, sentences separated by blank lines")
    return sentences


def _check_columns(where: str, number: int, fields: list[str], expected: tuple[int, int], tag_column: int) -> None:
    columns, first = expected
    if len(fields) != columns:
        raise FinetuneInputError(
            f"{where} line {number}: {len(fields)} column(s), but line {first} has {columns}; every token line "
            "needs the same columns (token first, separated by whitespace): fix or remove that line")
    if columns < 2 or not -columns <= tag_column < columns or tag_column in (0, -columns):
        raise FinetuneInputError(
            f"{where} line {number}: tag column {tag_column} is not a tag column of a line with {columns} "
            "column(s) (the token is column 0); choose another with --tag-column")


def tag_names(train: Sentences) -> list[str]:
    """Tags sorted with 'O' first, so id 0 is 'outside' where there is one."""
    names = {t for sentence in train.tags for t in sentence}
    return sorted(names, key=lambda t: (t != "O", t[2:] if _IOB.match(t) else t, t))


def scheme(tags: list[list[str]]) -> str | None:
    """'IOB2' when every entity starts with B-, 'IOB1' when some start with I-, None for other tag sets."""
    flat = {t for sentence in tags for t in sentence}
    if not flat or not all(_IOB.match(t) for t in flat) or flat == {"O"}:
        return None
    for sentence in tags:
        before = "O"
        for tag in sentence:
            if tag.startswith("I-") and before[2:] != tag[2:]:
                return "IOB1"
            before = tag
    return "IOB2"


def encode(tokenizer, sentences: Sentences, names: list[str], max_length: int) -> list[dict]:
    """Word-piece features; only a word's first piece carries its tag (the others are IGNORED)."""
    index = {n: i for i, n in enumerate(names)}
    for sentence_tags in sentences.tags:
        for tag in sentence_tags:
            if tag not in index:
                raise FinetuneInputError(f"{sentences.where}: tag '{tag}' does not occur in the training split "
                                         f"(its tags: {names[:20]}); add it to the training split")
    enc = tokenizer(sentences.tokens, is_split_into_words=True, truncation=True, max_length=max_length)
    features = []
    for i, sentence_tags in enumerate(sentences.tags):
        labels, seen = [], set()
        for word in enc.word_ids(i):
            first = word is not None and word not in seen
            labels.append(index[sentence_tags[word]] if first else IGNORED)
            seen.add(word)
        features.append({**{k: enc[k][i] for k in enc.keys()}, "labels": labels})
    return features


def word_predictions(features: list[dict], logits: list, names: list[str], sentences: Sentences) -> list[list[str]]:
    """One tag per word; words cut off by --max-length are predicted 'O' (or the first tag)."""
    fallback = "O" if "O" in names else names[0]
    out = []
    for feature, row, gold in zip(features, logits, sentences.tags):
        tags = [names[int(row[pos].argmax())] for pos, label in enumerate(feature["labels"]) if label != IGNORED]
        out.append(tags + [fallback] * (len(gold) - len(tags)))
    return out


def scores(predicted: list[list[str]], sentences: Sentences) -> dict[str, float]:
    gold = sentences.tags
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
    result = {"token_accuracy": sum(g == p for g, p in pairs) / max(len(pairs), 1)}
    kind = scheme(gold)
    if kind is None:
        return result
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    mode = {"mode": "strict", "scheme": IOB2} if kind == "IOB2" else {}
    for name, metric in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        result[name] = float(metric(gold, predicted, zero_division=0, **mode))
    return result
