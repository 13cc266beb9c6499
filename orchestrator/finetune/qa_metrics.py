"""Exact match and F1 of extractive question answering, by the usual definitions.

An answer and a gold answer are compared after normalisation: lower case, punctuation removed,
the articles a/an/the removed, whitespace collapsed. Exact match is 1 when the normalised strings
are equal; F1 is the harmonic mean of precision and recall of their token bags. A question scores
its best gold answer; an unanswerable one has the single gold answer "" (so only an empty
prediction scores). Both are reported as percentages over the questions.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, wanted = normalize(prediction).split(), normalize(gold).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def scores(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """``golds`` maps question id -> gold answers ([""] when unanswerable)."""
    if not golds:
        return {"exact_match": 0.0, "f1": 0.0}
    em = sum(max(exact(predictions.get(q, ""), g) for g in answers) for q, answers in golds.items())
    f = sum(max(f1(predictions.get(q, ""), g) for g in answers) for q, answers in golds.items())
    result = {"exact_match": 100 * em / len(golds), "f1": 100 * f / len(golds)}
    answerable = {q: a for q, a in golds.items() if a != [""]}
    if answerable and len(answerable) < len(golds):  # v2-style data: the unanswerable share reported apart
        result["has_answer_f1"] = 100 * sum(max(f1(predictions.get(q, ""), g) for g in a)
                                            for q, a in answerable.items()) / len(answerable)
        result["no_answer_accuracy"] = 100 * sum(predictions.get(q, "") == "" for q in golds
                                                 if q not in answerable) / (len(golds) - len(answerable))
    return result
