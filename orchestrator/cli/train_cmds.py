"""`bertctl run` (prepare -> train through an embedded manager -> export -> fill-mask) and `bertctl export`.

``run`` starts an embedded job manager (loopback API, SQLite store, local backend, supervisor)
with its data under ``--data-dir`` (default ``.bertctl/run``), submits the job to it and follows
the job's view: the progress bar is fed by the trainer's heartbeats, and a preempted or lost
attempt is retried from the newest checkpoint like any other job. Ctrl-C cancels the job (the
trainer gets SIGTERM, checkpoints and stops) and waits until nothing of it runs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from orchestrator import storage as st
from orchestrator.cli.common import app, console, console_err
from orchestrator.cli.follow import RUN_BAR, follow_job
from orchestrator.manager.phases import Phase
from orchestrator.spec import PretrainJob, load_manifest

FILL_MASK_EXAMPLES = ["the [MASK] of the module.", "return a new [MASK] object.",
                      "raise an [MASK] if the file does not exist."]
DEFAULT_DATA_DIR = Path(".bertctl") / "run"


def _default_export_dir(job: PretrainJob, export_dir: Optional[Path]) -> Path:
    """Next to a local checkpoint URI, else under ./runs/<job>."""
    uri = job.spec.checkpoint.uri.rstrip("/")
    base = st.local_path(uri).parent if not st.is_s3(uri) else Path("runs") / job.metadata.name
    return export_dir or base / "export"


def _read_metrics(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [r for r in (json.loads(ln) for ln in lines if ln.strip()) if "loss" in r]


def _trainer_command(metrics: Path) -> list[str]:
    """The manager's local backend appends --manifest FILE; BERTCTL_TRAINER_COMMAND (a site wrapper, a
    test's fake trainer) replaces this whole inside EmbeddedManager."""
    return [sys.executable, "-m", "orchestrator.train", "--metrics-file", str(metrics), "--no-prepare"]


def _submit_and_follow(job: PretrainJob, data_dir: Path) -> tuple[dict[str, Any], list[dict], Path]:
    """Embedded manager up, leftovers of an earlier run cancelled, job submitted and followed to its end.
    Returns (the job's final view, the trainer's metrics rows, the attempt logs' directory)."""
    from orchestrator.manager.client import ManagerClient
    from orchestrator.manager.embedded import EmbeddedManager

    metrics = data_dir / "work" / job.metadata.name / "metrics.jsonl"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    stop_s = job.spec.checkpoint.preemption_deadline_s + 60.0  # SIGTERM grace (deadline + 5 s) + SIGKILL wait
    em = EmbeddedManager(data_dir=data_dir, default_trainer_command=_trainer_command(metrics),
                         interval_s=0.5).start()
    signal.signal(signal.SIGTERM, _interrupt)  # the trainer is in its own session: stop it like Ctrl-C does
    try:
        em.cancel_active(stop_s)
        metrics.unlink(missing_ok=True)
        client = ManagerClient(em.url, em.token)
        job_id = client.submit(yaml.safe_dump(job.to_dict(), sort_keys=False))["id"]
        logs = data_dir.resolve() / "jobs" / job_id
        console.print(f"job [bold]{job_id}[/bold] on an embedded manager; store {em.manager.store.dialect} in "
                      f"{data_dir.resolve()}, trainer logs {logs}/attempt-N/trainer.log", highlight=False,
                      soft_wrap=True)
        _show_dashboard(em.url, _ui_token_file(data_dir, em.token))
        view = follow_job(client, job_id, RUN_BAR)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the trainer running
        console_err.print(f"cancelling: the trainer checkpoints and stops (up to {stop_s:.0f}s)")
        raise
    finally:
        em.stop(cancel_jobs=True, timeout_s=stop_s)
    return view, _read_metrics(metrics), logs


def _ui_token_file(data_dir: Path, token: str) -> Path:
    """The embedded manager's token in a file only this user can read: the dashboard's login needs it,
    and a terminal or a CI log must never show it."""
    path = data_dir.resolve() / "ui-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an older file keeps its mode through O_CREAT
        fh.write(token + "\n")
    return path


def _show_dashboard(url: str, token_file: Path) -> None:
    console.print(f"dashboard {url}/ui (sign in with the token in {token_file})", highlight=False, soft_wrap=True)


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def _report_failure(view: dict[str, Any], logs: Path) -> int:
    attempts = view["attempts"]
    last = attempts[-1] if attempts else None
    if last is not None:
        log_path = logs / f"attempt-{last['number']}" / "trainer.log"
        try:
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
        except OSError:
            tail = []
        console_err.print("\n".join(tail), highlight=False, markup=False)
        console_err.print(f"full log: {log_path}", highlight=False, soft_wrap=True)
    console_err.print(f"[red]training {view['phase'].lower()}[/red]: {view['message'] or '-'} "
                      f"({len(attempts)} attempt(s), {view['restarts_used']} restart(s))", highlight=False,
                      soft_wrap=True)
    code = last["exit_code"] if last and last["exit_code"] else 1
    return code if 0 < code < 256 else 1


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
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="The embedded manager's store, attempt "
                                  "logs and metrics (kept after the run)."),
) -> None:
    """Prepare the data if needed, train through an embedded job manager (retries preemptions and lost
    workers from the newest checkpoint) with a progress bar, export, fill-mask."""
    job = load_manifest(manifest)
    started = time.time()
    export_to = _default_export_dir(job, export_dir)
    _prepare(job)
    for key, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)  # inherited by the trainer through the local backend
    view, rows, logs = _submit_and_follow(job.with_absolute_paths(), data_dir)
    if view["phase"] != Phase.SUCCEEDED:
        raise typer.Exit(_report_failure(view, logs))
    _summary(rows, view, time.time() - started)
    if no_export:
        return
    _export_and_fill_mask(job, export_to)
    console.print(f"done in {time.time() - started:.0f}s", highlight=False)


def _prepare(job: PretrainJob) -> None:
    from orchestrator.data.prepare import coverage_for_job, prepare_for_job

    console.print(f"[bold]{job.metadata.name}[/bold]: preparing data in {job.spec.data.shards} (if needed)")
    index = prepare_for_job(job)
    console.print(f"data: {index.total_rows:,} sequences of {index.seq_len} tokens, vocabulary {index.vocab_size}",
                  highlight=False)
    warning = coverage_for_job(job, index)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def _export_and_fill_mask(job: PretrainJob, export_to: Path) -> None:
    from orchestrator.train.export import export_checkpoint

    _quiet_transformers()
    out = export_checkpoint(job.spec.checkpoint.uri, export_to)
    console.print(f"exported step {out.step} ({out.parameters:,} parameters) to {out.output}", highlight=False)
    _fill_mask(out.output)


def _summary(rows: list[dict], view: dict[str, Any], seconds: float) -> None:
    retried = f", {view['restarts_used']} restart(s)" if view["restarts_used"] else ""
    if not rows:  # the trainer wrote no metrics: already at max_steps, or a trainer without a metrics file
        console.print(f"job at step {view['step']}/{view['max_steps']} in {len(view['attempts'])} attempt(s)"
                      f"{retried}, wall {seconds:.0f}s", highlight=False)
        return
    first, last = rows[: min(5, len(rows))], rows[-min(5, len(rows)):]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    tokens = sum(r.get("tokens", 0) for r in rows)
    compute = sum(r.get("seconds", 0.0) for r in rows)
    console.print(f"trained steps {rows[0]['step']}-{rows[-1]['step']}: mlm loss {mean(first, 'mlm_loss'):.3f} "
                  f"-> {mean(last, 'mlm_loss'):.3f}, mlm accuracy {mean(last, 'mlm_accuracy'):.3f}, "
                  f"{tokens / max(compute, 1e-9):,.0f} tokens/s in steps, {len(view['attempts'])} attempt(s)"
                  f"{retried}, wall {seconds:.0f}s", highlight=False)


@app.command("export")
def export_cmd(
    checkpoint: str = typer.Argument(..., help="A checkpoint URI root (its newest committed checkpoint) "
                                     "or one step-NNNNNNNN directory; with --format onnx also a Hugging Face "
                                     "directory (an export, or a model from `bertctl finetune`)."),
    output: Path = typer.Option(..., "--output", help="The Hugging Face model directory to write."),
    format: str = typer.Option("hf", "--format", help="hf: a Hugging Face directory; onnx: DIR/model.onnx with "
                               "dynamic batch and sequence axes, checked by onnxruntime against PyTorch."),
) -> None:
    """Consolidate a committed checkpoint into a Hugging Face model directory (CPU, no Ray), or ONNX."""
    from orchestrator.train.export import export_checkpoint

    if format == "onnx":
        from orchestrator.finetune.onnx_export import export_onnx

        done = export_onnx(checkpoint, output)
        console.print(f"exported {done.kind} ({', '.join(done.outputs)}) to {done.output / 'model.onnx'}; onnxruntime "
                      f"vs PyTorch max abs diff {done.max_abs_diff:.1e}", highlight=False)
        return
    if format != "hf":
        raise typer.BadParameter(f"--format {format}: choose hf or onnx")
    out = export_checkpoint(checkpoint, output)
    console.print(f"exported step {out.step} ({out.parameters:,} parameters) from {out.source} to {out.output}",
                  highlight=False)
