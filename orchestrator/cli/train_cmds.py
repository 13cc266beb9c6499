"""`bertctl run` (prepare -> train on local Ray -> export -> fill-mask) and `bertctl export`.

``run`` launches the trainer entry (``python -m orchestrator.train``) as its own process group,
exactly as the manager's local backend does, and draws a progress bar from the metrics file
that the Ray Train controller appends to after every worker report. Ctrl-C kills the group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from orchestrator import storage as st
from orchestrator.cli.common import app, console, console_err
from orchestrator.spec import PretrainJob, load_manifest

FILL_MASK_EXAMPLES = ["the [MASK] of the module.", "return a new [MASK] object.",
                      "raise an [MASK] if the file does not exist."]


def _default_dirs(job: PretrainJob, export_dir: Optional[Path]) -> tuple[Path, Path]:
    """(work dir, export dir): next to a local checkpoint URI, else under ./runs/<job>."""
    uri = job.spec.checkpoint.uri.rstrip("/")
    base = st.local_path(uri).parent if not st.is_s3(uri) else Path("runs") / job.metadata.name
    return base / "run", (export_dir or base / "export")


def _read_metrics(path: Path, offset: int) -> tuple[list[dict], int]:
    try:
        with open(path) as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    complete = chunk[: chunk.rfind("\n") + 1]
    rows = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return rows, offset + len(complete)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  mlm-acc {task.fields[acc]}  {task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
    )


def _follow(proc: subprocess.Popen, metrics: Path, max_steps: int) -> list[dict]:
    """Update the progress bar until the trainer exits; returns every metrics row."""
    rows: list[dict] = []
    offset = 0
    with _progress() as bar:
        task = bar.add_task("train", total=max_steps, loss="-", acc="-", tps="-")
        while True:
            new, offset = _read_metrics(metrics, offset)
            for row in (r for r in new if "loss" in r):
                rows.append(row)
                bar.update(task, completed=row["step"], loss=f"{row['loss']:.3f}",
                           acc=f"{row.get('mlm_accuracy', 0.0):.3f}", tps=f"{row.get('tokens_per_s', 0.0):,.0f}")
            if proc.poll() is not None:
                new, offset = _read_metrics(metrics, offset)
                rows += [r for r in new if "loss" in r]
                return rows
            time.sleep(0.5)


def _launch(manifest: Path, work_dir: Path, metrics: Path, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.train", "--manifest", str(manifest.resolve()),
           "--work-dir", str(work_dir), "--metrics-file", str(metrics), "--no-prepare"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    log = open(log_path, "ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fill_mask(export_dir: Path) -> None:
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(export_dir), device="cpu")
    for text in FILL_MASK_EXAMPLES:
        preds = fill(text, top_k=5)
        shown = ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in preds)
        console.print(f"  [bold]{text}[/bold] -> {shown}", highlight=False)


@app.command("run")
def run_cmd(
    manifest: Path = typer.Argument(..., help="A PretrainJob YAML file."),
    no_export: bool = typer.Option(False, "--no-export", help="Stop after training (no export, no fill-mask)."),
    export_dir: Optional[Path] = typer.Option(None, "--export-dir", help="Where the HF model goes "
                                              "(default: <checkpoint.uri>/../export)."),
) -> None:
    """Prepare the data if needed, train on a local Ray cluster with a progress bar, export, fill-mask."""
    from orchestrator.data.prepare import prepare_for_job

    job = load_manifest(manifest)
    started = time.time()
    work_dir, export_to = _default_dirs(job, export_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]{job.metadata.name}[/bold]: preparing data in {job.spec.data.shards} (if needed)")
    index = prepare_for_job(job)
    console.print(f"data: {index.total_rows:,} sequences of {index.seq_len} tokens, vocabulary {index.vocab_size}",
                  highlight=False)
    metrics, log_path = work_dir / "metrics.jsonl", work_dir / "trainer.log"
    metrics.unlink(missing_ok=True)
    proc = _launch(manifest, work_dir, metrics, log_path)
    try:
        rows = _follow(proc, metrics, job.spec.training.max_steps)
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    code = proc.wait()
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        console_err.print("\n".join(tail), highlight=False, markup=False)
        console_err.print(f"[red]training failed[/red] (exit {code}); full log: {log_path}")
        raise typer.Exit(code)
    train_s = time.time() - started
    _summary(rows, train_s)
    if no_export:
        return
    from orchestrator.train.export import export_checkpoint

    _quiet_transformers()
    out = export_checkpoint(job.spec.checkpoint.uri, export_to)
    console.print(f"exported step {out.step} ({out.parameters:,} parameters) to {out.output}", highlight=False)
    _fill_mask(out.output)
    console.print(f"done in {time.time() - started:.0f}s", highlight=False)


def _summary(rows: list[dict], seconds: float) -> None:
    if not rows:
        console.print("nothing to train: the newest checkpoint is already at max_steps")
        return
    first, last = rows[: min(5, len(rows))], rows[-min(5, len(rows)):]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    tokens = sum(r.get("tokens", 0) for r in rows)
    compute = sum(r.get("seconds", 0.0) for r in rows)
    console.print(f"trained steps {rows[0]['step']}-{rows[-1]['step']}: mlm loss {mean(first, 'mlm_loss'):.3f} "
                  f"-> {mean(last, 'mlm_loss'):.3f}, mlm accuracy {mean(last, 'mlm_accuracy'):.3f}, "
                  f"{tokens / max(compute, 1e-9):,.0f} tokens/s in steps, wall {seconds:.0f}s", highlight=False)


@app.command("export")
def export_cmd(
    checkpoint: str = typer.Argument(..., help="A checkpoint URI root (its newest committed checkpoint) "
                                     "or one step-NNNNNNNN directory."),
    output: Path = typer.Option(..., "--output", help="The Hugging Face model directory to write."),
) -> None:
    """Consolidate a committed checkpoint into a Hugging Face model directory (CPU, no Ray)."""
    from orchestrator.train.export import export_checkpoint

    out = export_checkpoint(checkpoint, output)
    console.print(f"exported step {out.step} ({out.parameters:,} parameters) from {out.source} to {out.output}",
                  highlight=False)
