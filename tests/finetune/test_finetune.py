"""`bertctl finetune` for the three tasks, from a checkpoint URI (a root, one step directory, on S3) and from
an export (local, on S3), with data on disk and on S3 (moto's server). The data sets are easy on purpose:
a bert-tiny-shaped model learns them in ~100 steps, so each test checks that it learned, that scores.json
says so, and that the saved directory reloads into a working transformers pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.storage import storage_for
from tests.finetune.conftest import write_checkpoint

FAST = ["--max-steps", "100", "--lr", "3e-3", "--batch-size", "8", "--quiet"]
METRICS = {"classification": ("accuracy", "macro_f1"),
           "token-classification": ("token_accuracy", "precision", "recall", "f1"),
           "question-answering": ("exact_match", "f1", "has_answer_f1", "no_answer_accuracy")}
LEARNED = {"classification": ("accuracy", 0.9), "token-classification": ("f1", 0.9),
           "question-answering": ("exact_match", 90.0)}


def run_finetune(model: str, task: str, train: str, validation: str, output: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["finetune", model, "--task", task, "--train", train, "--validation", validation,
                                      "--output", str(output), *FAST, *extra])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert task in result.output and "validation examples" in result.output
    return json.loads((output / "scores.json").read_text())


def check_scores(scores: dict, task: str, model: str) -> None:
    assert scores["task"] == task and scores["model"] == model
    assert set(scores["metrics"]) == set(METRICS[task])
    name, floor = LEARNED[task]
    assert scores["metrics"][name] >= floor, scores
    assert scores["steps"] == 100 and scores["examples_seen"] == 800 and scores["seconds"] > 0


def check_reloads(output: Path, task: str) -> None:
    """The directory is a plain Hugging Face model: transformers' pipelines run it with the saved labels."""
    from transformers import pipeline

    if task == "classification":
        assert pipeline("text-classification", model=str(output))("the movie was great")[0]["label"] == "pos"
    elif task == "token-classification":
        found = pipeline("token-classification", model=str(output))("the team visited paris")
        assert [(e["word"], e["entity"]) for e in found] == [("paris", "B-LOC")]
    else:  # transformers 5 has no question-answering pipeline: the head's best span, read by hand
        assert _best_span(output, "who won the cup", "the team played and mary won the cup") == "mary"


def _best_span(output: Path, question: str, context: str) -> str:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(output))
    model = AutoModelForQuestionAnswering.from_pretrained(str(output)).eval()
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0]
    with torch.no_grad():
        out = model(**enc)
    start, end = int(out.start_logits[0].argmax()), int(out.end_logits[0].argmax())
    return context[int(offsets[start][0]):int(offsets[end][1])]


@pytest.mark.parametrize("task", sorted(METRICS))
def test_each_task_from_a_checkpoint_uri(task, checkpoint, data, tmp_path):
    train, validation = data[task]
    scores = run_finetune(checkpoint, task, str(train), str(validation), tmp_path / "out")
    check_scores(scores, task, checkpoint)
    check_reloads(tmp_path / "out", task)


@pytest.mark.parametrize("task", sorted(METRICS))
def test_each_task_from_an_export(task, exported, data, tmp_path):
    train, validation = data[task]
    scores = run_finetune(str(exported), task, str(train), str(validation), tmp_path / "out")
    check_scores(scores, task, str(exported))
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()


def test_one_step_directory_of_a_checkpoint_is_a_model_too(checkpoint, data, tmp_path):
    step = f"{checkpoint}/step-00000002"
    scores = run_finetune(step, "classification", *map(str, data["classification"]), tmp_path / "out")
    check_scores(scores, "classification", step)


def _upload(local: Path, uri: str) -> str:
    storage = storage_for(uri)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.upload_file(str(path), f"{uri}/{path.relative_to(local).as_posix()}")
    return uri


def test_s3_checkpoint_s3_export_and_s3_data(s3_env, exported, data, tmp_path):
    bucket = f"s3://{s3_env}"
    checkpoint = write_checkpoint(f"{bucket}/run/checkpoints", tmp_path / "work")
    export = _upload(exported, f"{bucket}/run/export")
    staged = tmp_path / "staged"
    for task, files in data.items():
        (staged / task).mkdir(parents=True)
        for f in files:
            shutil.copy(f, staged / task / f.name)
    _upload(staged, f"{bucket}/data")
    for model, task in ((checkpoint, "token-classification"), (export, "question-answering"),
                        (export, "classification")):
        train, validation = (f"{bucket}/data/{task}/{f.name}" for f in data[task])
        out = tmp_path / f"out-{task}"
        check_scores(run_finetune(model, task, train, validation, out), task, model)


def test_csv_pairs_with_integer_labels_of_three_classes(exported, tmp_path):
    """Labels 2, 10 and 7 (integers, sorted numerically) decided by the second text of a pair."""
    words = {"2": "john", "7": "paris", "10": "acme"}
    lines = ["premise,hypothesis,stars"] + [f"the movie was fun,{words[label]} {filler},{label}"
                                              for filler in ("won", "lost", "played", "works") for label in words] * 4
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    split = str(tmp_path / "pairs.csv")
    scores = run_finetune(str(exported), "classification", split, split, tmp_path / "out", "--text-column", "premise",
                          "--text-pair-column", "hypothesis", "--label-column", "stars")
    assert scores["labels"] == ["2", "7", "10"] and scores["metrics"]["accuracy"] >= 0.9
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "2", "1": "7", "2": "10"}
