"""Extractive question answering on SQuAD-format JSON (v1.1, and v2.0 with unanswerable questions).

A context longer than --max-length is cut into overlapping windows (--doc-stride tokens of overlap),
as BERT reads 512 tokens at most. Training labels each window with the answer's first and last
token, or with [CLS] when the answer is not inside it (and for unanswerable questions). At
evaluation the best span over all windows of a question wins unless [CLS] (no answer) scores
higher, and the text is cut from the context by the tokenizer's character offsets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.finetune.source import FinetuneInputError

N_BEST = 20
MAX_ANSWER_TOKENS = 30


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)  # (text, character offset); [] unanswerable


@dataclass
class QuestionSet:
    where: str
    version: str
    questions: list[Question]

    def golds(self) -> dict[str, list[str]]:
        return {q.id: [a for a, _ in q.answers] or [""] for q in self.questions}


def read_questions(path: Path, where: str) -> QuestionSet:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FinetuneInputError(f"{where}: not JSON ({exc}); pass a SQuAD-format file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise FinetuneInputError(f"{where}: field 'data' (a list of articles) is missing; pass a SQuAD-format "
                                 "file: {\"data\": [{\"paragraphs\": [{\"context\": ..., \"qas\": [...]}]}]}")
    questions = []
    for i, article in enumerate(doc["data"]):
        for j, paragraph in enumerate(_field(article, "paragraphs", list, where, f"data[{i}]")):
            at = f"data[{i}].paragraphs[{j}]"
            context = _field(paragraph, "context", str, where, at)
            for k, qa in enumerate(_field(paragraph, "qas", list, where, at)):
                questions.append(_question(qa, context, where, f"{at}.qas[{k}]"))
    if not questions:
        raise FinetuneInputError(f"{where}: the split is empty (no questions under data[].paragraphs[].qas)")
    return QuestionSet(where, str(doc.get("version", "")), questions)


def _field(obj, name: str, kind, where: str, at: str):
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise FinetuneInputError(f"{where}: field {at}.{name} is missing or not a {kinds}; every "
                                 f"{at.rsplit('.', 1)[-1].split('[')[0]} entry needs one")
    return value


def _question(qa: dict, context: str, where: str, at: str) -> Question:
    question = Question(str(_field(qa, "id", (str, int), where, at)), _field(qa, "question", str, where, at), context)
    if qa.get("is_impossible"):
        return question
    for m, answer in enumerate(_field(qa, "answers", list, where, at)):
        text = _field(answer, "text", str, where, f"{at}.answers[{m}]")
        start = _field(answer, "answer_start", int, where, f"{at}.answers[{m}]")
        if context[start:start + len(text)] != text:
            found = context.find(text)
            hint = f"it occurs at {found}" if found >= 0 else "it does not occur in the context"
            raise FinetuneInputError(
                f"{where}: {at}.answers[{m}] (question id {question.id}): the text {text!r} is not at answer_start "
                f"{start} (the context there reads {context[start:start + len(text)]!r}; {hint}); fix answer_start "
                "to the character offset of the answer in its context")
        question.answers.append((text, start))
    if not question.answers:
        raise FinetuneInputError(f"{where}: {at} has no answers and is not marked is_impossible; add an answer or "
                                 "set \"is_impossible\": true")
    return question


def fit_stride(tokenizer, sets: list[QuestionSet], max_length: int, stride: int) -> int:
    """The overlap of windows, below half the context room the longest question leaves in --max-length."""
    longest, where = 0, ""
    for qs in sets:
        lengths = [len(ids) for ids in tokenizer([q.question for q in qs.questions])["input_ids"]]
        if max(lengths) > longest:
            longest, where = max(lengths), f"{qs.where}: question id {qs.questions[lengths.index(max(lengths))].id}"
    room = max_length - longest - 1  # [CLS] question [SEP] context [SEP]
    if room < 8:
        raise FinetuneInputError(f"{where} is {longest} tokens long, which leaves {max(room, 0)} of --max-length "
                                 f"{max_length} for its context; raise --max-length or shorten the question")
    return max(1, min(stride, room // 2))


def _windows(tokenizer, questions: list[Question], max_length: int, stride: int):
    return tokenizer([q.question for q in questions], [q.context for q in questions], truncation="only_second",
                     max_length=max_length, stride=stride, return_overflowing_tokens=True,
                     return_offsets_mapping=True, padding=False)


def encode_train(tokenizer, qs: QuestionSet, max_length: int, stride: int) -> list[dict]:
    enc = _windows(tokenizer, qs.questions, max_length, stride)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        question = qs.questions[enc["overflow_to_sample_mapping"][i]]
        start, end = _answer_tokens(question, offsets, enc.sequence_ids(i))
        features.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                         "attention_mask": enc["attention_mask"][i], "start_positions": start,
                         "end_positions": end})
    return features


def _answer_tokens(question: Question, offsets, sequence_ids) -> tuple[int, int]:
    """First and last token of the (first) answer inside this window; (0, 0) = [CLS] = not here."""
    if not question.answers:
        return 0, 0
    text, start_char = question.answers[0]
    end_char = start_char + len(text)
    context = [t for t, s in enumerate(sequence_ids) if s == 1]
    if offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = next(t for t in context if offsets[t][1] > start_char)
    end = next(t for t in reversed(context) if offsets[t][0] < end_char)
    return start, end


def encode_eval(tokenizer, qs: QuestionSet, max_length: int, stride: int) -> tuple[list[dict], list[dict]]:
    """Model inputs per window, and per window its question and the context offsets of its tokens."""
    enc = _windows(tokenizer, qs.questions, max_length, stride)
    inputs, meta = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        inputs.append({k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask")})
        sequence_ids = enc.sequence_ids(i)
        meta.append({"question": enc["overflow_to_sample_mapping"][i],
                     "offsets": [o if s == 1 else None for o, s in zip(offsets, sequence_ids)]})
    return inputs, meta


def predict_answers(qs: QuestionSet, meta: list[dict], starts: list, ends: list) -> dict[str, str]:
    """The best answer text per question id ("" when no answer scores above [CLS] in every window)."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for window, (start_logits, end_logits) in zip(meta, zip(starts, ends)):
        q = window["question"]
        null[q] = min(null.get(q, float("inf")), float(start_logits[0] + end_logits[0]))
        for score, text in _spans(qs.questions[q].context, window["offsets"], start_logits, end_logits):
            if q not in best or score > best[q][0]:
                best[q] = (score, text)
    unanswerable = any(not q.answers for q in qs.questions)
    return {question.id: _choose(best.get(q), null.get(q, 0.0), unanswerable)
            for q, question in enumerate(qs.questions)}


def _choose(best: tuple[float, str] | None, null_score: float, allow_empty: bool) -> str:
    if best is None or (allow_empty and null_score > best[0]):
        return ""
    return best[1]


def _spans(context: str, offsets: list, start_logits, end_logits):
    starts = sorted(range(len(offsets)), key=lambda t: -float(start_logits[t]))[:N_BEST]
    ends = sorted(range(len(offsets)), key=lambda t: -float(end_logits[t]))[:N_BEST]
    for s in starts:
        for e in ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                continue
            yield float(start_logits[s] + end_logits[e]), context[offsets[s][0]:offsets[e][1]]
