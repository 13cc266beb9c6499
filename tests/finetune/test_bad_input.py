"""Bad input to `bertctl finetune`: exit 2 and one message naming the file, the line or the field, and the fix.

One table: each row writes a broken input (or breaks a copy of the export) and names the phrases the
message must hold. Every row runs through ``orchestrator.cli.main``, the real entry point.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.finetune.conftest import write_classification


def _csv(tmp: Path, text: str) -> Path:
    path = tmp / "split.csv"
    path.write_text(text)
    return path


def _questions(tmp: Path, answer_start: int) -> Path:
    doc = {"data": [{"paragraphs": [{"context": "mary won the cup", "qas": [
        {"id": "q1", "question": "who won", "answers": [{"text": "mary", "answer_start": 0}]},
        {"id": "q2", "question": "what was won", "answers": [{"text": "cup", "answer_start": answer_start}]}]}]}]}
    path = tmp / "questions.json"
    path.write_text(json.dumps(doc))
    return path


def _conll(tmp: Path, text: str) -> Path:
    path = tmp / "split.conll"
    path.write_text(text)
    return path


def _broken_model(exported: Path, tmp: Path, **config) -> Path:
    model = tmp / "model"
    shutil.copytree(exported, model)
    fields = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**fields, **config}))
    return model


# name -> (task, make(tmp, exported, good_train) -> (model or None, train, validation, extra args), phrases)
CASES = {
    "label column missing": ("classification", lambda t, e, g: (None, _csv(t, "text,stars\nthe movie was good,5\n"), g, []),
                             ["split.csv line 2", "no column 'label'", "['stars', 'text']", "--label-column"]),
    "text column missing": ("classification", lambda t, e, g: (None, g, g, ["--text-column", "review"]),
                            ["train.jsonl line 1", "no column 'review'", "--text-column"]),
    "pair column missing": ("classification", lambda t, e, g: (None, g, g, ["--text-pair-column", "second"]),
                            ["no column 'second'", "--text-pair-column"]),
    "CoNLL line with a column too few": (
        "token-classification", lambda t, e, g: (None, _conll(t, "john NN B-PER\nwon VB O\n\nmary B-PER\n"), None, []),
        ["split.conll line 4", "2 column(s), but line 1 has 3", "same columns"]),
    "answer not at its offset": ("question-answering", lambda t, e, g: (None, _questions(t, 3), None, []),
                                 ["questions.json", "data[0].paragraphs[0].qas[1].answers[0]", "question id q2",
                                  "'cup' is not at answer_start 3", "occurs at 13", "fix answer_start"]),
    "empty classification split": ("classification", lambda t, e, g: (None, _csv(t, "text,label\n"), g, []),
                                   ["split.csv", "the split is empty"]),
    "empty CoNLL split": ("token-classification", lambda t, e, g: (None, _conll(t, "-DOCSTART- -X- O\n\n"), None, []),
                          ["split.conll", "the split is empty"]),
    "vocabulary smaller than the tokenizer": (
        "classification", lambda t, e, g: (_broken_model(e, t, vocab_size=50), g, g, []),
        ["the tokenizer has token ids up to", "vocab_size (config.json) is 50", "not saved together"]),
    "a head that cannot load": (
        "classification", lambda t, e, g: (_broken_model(e, t, hidden_size=64, intermediate_size=128), g, g, []),
        ["AutoModelForSequenceClassification head cannot load", "other shapes than its config.json"]),
    "label absent from the training split": (
        "classification", lambda t, e, g: (None, g, _csv(t, "text,label\nthe movie was good,meh\n"), []),
        ["split.csv line 2", "label 'meh' does not occur in the training split"]),
    "unknown task": ("summarization", lambda t, e, g: (None, g, g, []), ["--task summarization", "classification"]),
    "no such data file": ("classification", lambda t, e, g: (None, t / "missing.csv", g, []),
                          ["missing.csv: no such file"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_naming_the_place_and_the_fix(case, exported, tmp_path, monkeypatch, capsys):
    task, make, phrases = CASES[case]
    good = write_classification(tmp_path / "train.jsonl", 8, 0)
    model, train, validation, extra = make(tmp_path, exported, good)
    argv = ["bertctl", "finetune", str(model or exported), "--task", task, "--train", str(train), "--validation",
            str(validation or train), "--output", str(tmp_path / "out"), "--max-steps", "1", "--quiet", *extra]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as ended:
        main()
    message = " ".join(capsys.readouterr().err.split())
    assert ended.value.code == 2, message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert not (tmp_path / "out" / "scores.json").exists()
