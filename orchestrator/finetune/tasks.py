"""The three tasks as one shape: read and encode both splits, name the head, score the validation split.

``prepare_task`` reads the files (every problem a FinetuneInputError naming file and line or field)
before any model is loaded, so bad input fails in a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.finetune import classification, conll, qa, qa_metrics
from orchestrator.finetune.loop import predict

TASKS = ("classification", "token-classification", "question-answering")


@dataclass
class Options:
    """What the task needs besides the files: columns, windowing."""

    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    tag_column: int = -1
    doc_stride: int = 128


@dataclass
class Prepared:
    head: str                              # the transformers Auto class of the task head
    config: dict[str, Any]                 # config fields of the head (labels)
    train: list[dict]                      # encoded training features
    validation_examples: int
    collator: Callable
    evaluate: Callable[..., dict]          # (model, batch_size, device) -> metrics
    notes: dict[str, Any] = field(default_factory=dict)


def prepare_task(task: str, tokenizer, train: tuple[Path, str], validation: tuple[Path, str], max_length: int,
                 options: Options) -> Prepared:
    """Each split as (local path, the name the user gave it)."""
    return _BUILDERS[task](tokenizer, train, validation, max_length, options)


def _classification(tokenizer, train, validation, max_length: int, options: Options) -> Prepared:
    from transformers import DataCollatorWithPadding

    columns = classification.Columns(options.text_column, options.text_pair_column, options.label_column)
    rows = classification.read_rows(*train, columns)
    held_out = classification.read_rows(*validation, columns)
    names = classification.label_names(rows)
    features = classification.encode(tokenizer, rows, classification.label_ids(rows, names), max_length)
    gold = classification.label_ids(held_out, names)
    eval_features = classification.encode(tokenizer, held_out, gold, max_length)
    collator = DataCollatorWithPadding(tokenizer)

    def evaluate(model, batch_size: int, device) -> dict:
        logits = predict(model, eval_features, collator, batch_size, device, ("logits",), per_token=False)["logits"]
        return classification.scores([int(row.argmax()) for row in logits], gold)

    return Prepared("AutoModelForSequenceClassification", _labels(names), features, len(gold), collator, evaluate,
                    {"labels": names})


def _labels(names: list[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}


def _token_classification(tokenizer, train, validation, max_length: int, options: Options) -> Prepared:
    from transformers import DataCollatorForTokenClassification

    sentences = conll.read_conll(*train, tag_column=options.tag_column)
    held_out = conll.read_conll(*validation, tag_column=options.tag_column)
    names = conll.tag_names(sentences)
    features = conll.encode(tokenizer, sentences, names, max_length)
    eval_features = conll.encode(tokenizer, held_out, names, max_length)
    collator = DataCollatorForTokenClassification(tokenizer)

    def evaluate(model, batch_size: int, device) -> dict:
        logits = predict(model, eval_features, collator, batch_size, device, ("logits",), per_token=True)["logits"]
        return conll.scores(conll.word_predictions(eval_features, logits, names, held_out), held_out)

    return Prepared("AutoModelForTokenClassification", _labels(names), features, len(held_out.tokens), collator,
                    evaluate, {"labels": names, "scheme": conll.scheme(held_out.tags) or "token accuracy"})


def _question_answering(tokenizer, train, validation, max_length: int, options: Options) -> Prepared:
    from transformers import DataCollatorWithPadding

    questions = qa.read_questions(*train)
    held_out = qa.read_questions(*validation)
    stride = qa.fit_stride(tokenizer, [questions, held_out], max_length, options.doc_stride)
    features = qa.encode_train(tokenizer, questions, max_length, stride)
    eval_inputs, windows = qa.encode_eval(tokenizer, held_out, max_length, stride)
    collator = DataCollatorWithPadding(tokenizer)

    def evaluate(model, batch_size: int, device) -> dict:
        out = predict(model, eval_inputs, collator, batch_size, device, ("start_logits", "end_logits"), per_token=True)
        answers = qa.predict_answers(held_out, windows, out["start_logits"], out["end_logits"])
        return qa_metrics.scores(answers, held_out.golds())

    return Prepared("AutoModelForQuestionAnswering", {}, features, len(held_out.questions), collator, evaluate,
                    {"data_version": held_out.version, "doc_stride": stride})


_BUILDERS = {"classification": _classification, "token-classification": _token_classification,
             "question-answering": _question_answering}
