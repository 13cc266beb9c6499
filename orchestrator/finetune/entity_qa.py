"""An extractive question-answering set built from CoNLL-2003 entity spans.

No real extractive-QA data ships in the package registries, so this set is made from CoNLL-2003:
each sentence with an entity is a context (its tokens joined by spaces); for each entity type in it
one templated question ("Which person is named here?") whose gold answers are every entity of that
type in the sentence, at their real character offsets; and for one type absent from it, the same
kind of question marked unanswerable. It is written in the usual extractive-QA JSON layout so that
``bertctl finetune --task question-answering`` reads it, and it is named for what it is,
``conll2003-entity-qa``: an easy, templated set that checks the QA path on real text, not a reading
comprehension benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.finetune.conll import read_conll

NAME = "conll2003-entity-qa"
ABOUT = ("templated questions over CoNLL-2003 entity spans (one per entity type in a sentence, "
         "plus one unanswerable), built by bertctl; an easy check of extractive QA on real text, not a reading "
         "comprehension benchmark")
QUESTIONS = {"PER": "Which person is named here?", "ORG": "Which organisation is named here?",
             "LOC": "Which place is named here?", "MISC": "Which other name (nationality, event, work) appears here?"}


def entity_spans(tokens: list[str], tags: list[str]) -> tuple[str, list[tuple[str, str, int]]]:
    """The context (tokens joined by single spaces) and its (type, text, character offset) entities."""
    starts, offset = [], 0
    for token in tokens:
        starts.append(offset)
        offset += len(token) + 1
    context = " ".join(tokens)
    spans, current = [], None  # current: [type, first token, last token]
    for i, tag in enumerate(tags + ["O"]):
        continues = current is not None and tag == f"I-{current[0]}"
        if current is not None and not continues:
            first, last = current[1], current[2]
            spans.append((current[0], context[starts[first]:starts[last] + len(tokens[last])], starts[first]))
            current = None
        if continues:
            current[2] = i
        elif tag[:2] in ("B-", "I-"):
            current = [tag[2:], i, i]
    return context, spans


def _questions(number: int, context: str, spans: list[tuple[str, str, int]], split: str) -> list[dict]:
    present = sorted({kind for kind, _, _ in spans if kind in QUESTIONS})
    qas = [{"id": f"{split}-{number}-{kind}", "question": QUESTIONS[kind], "is_impossible": False,
            "answers": [{"text": text, "answer_start": start} for k, text, start in spans if k == kind]}
           for kind in present]
    absent = [kind for kind in sorted(QUESTIONS) if kind not in present]
    if absent:  # a type the sentence lacks, chosen by the sentence number so the set is the same every time
        kind = absent[number % len(absent)]
        qas.append({"id": f"{split}-{number}-{kind}-none", "question": QUESTIONS[kind], "is_impossible": True,
                    "answers": []})
    return qas


def build(conll_file: Path, split: str) -> bytes:
    """The JSON bytes of one split of the set, from one CoNLL-2003 split."""
    sentences = read_conll(conll_file, str(conll_file))
    paragraphs = []
    for number, (tokens, tags) in enumerate(zip(sentences.tokens, sentences.tags)):
        context, spans = entity_spans(tokens, tags)
        if spans:
            paragraphs.append({"context": context, "qas": _questions(number, context, spans, split)})
    doc = {"version": NAME, "about": ABOUT, "data": [{"title": f"CoNLL-2003 {split}", "paragraphs": paragraphs}]}
    return (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")
