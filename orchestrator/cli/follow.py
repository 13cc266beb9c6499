"""Follow a job's view to its end behind a progress bar: the one loop of `bertctl run` and `bertctl status -f`.

The two commands draw different bars (``RUN_BAR``, ``STATUS_BAR``); the loop (poll the view, update the
bar, stop at a terminal phase) is the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from orchestrator.cli.common import console
from orchestrator.manager.phases import TERMINAL, Phase

View = dict[str, Any]


@dataclass(frozen=True)
class Bar:
    """How one command draws a job's progress."""

    columns: Callable[[], list[ProgressColumn]]
    """The bar's columns (fresh per bar: rich columns keep per-bar state)."""
    initial: dict[str, str]
    """The task's description and fields where the first view's ``fields`` give none."""
    fields: Callable[[str, View], dict[str, Any]]
    """``Progress.update`` keyword arguments for (job id, view)."""
    report_ended_attempts: bool = False
    """Print a line for every attempt that ended other than by succeeding (a retry the user should see)."""
    poll_s: float = 1.0


def follow_job(client, job_id: str, bar: Bar) -> View:
    """Draw the job's progress from its view until it reaches a terminal phase; return that last view."""
    told: set[int] = set()
    with Progress(*bar.columns(), console=console, transient=False) as progress:
        view = client.get(job_id)
        task = progress.add_task(total=view["max_steps"], **{**bar.initial, **bar.fields(job_id, view)})
        while True:
            progress.update(task, **bar.fields(job_id, view))
            if bar.report_ended_attempts:
                _report_ended_attempts(progress, view, told)
            if Phase(view["phase"]) in TERMINAL:
                return view
            time.sleep(bar.poll_s)
            view = client.get(job_id)


def _report_ended_attempts(progress: Progress, view: View, told: set[int]) -> None:
    for a in view["attempts"]:
        if a["state"] == "ended" and a["number"] not in told:
            told.add(a["number"])
            if a["end_reason"] != "succeeded":
                progress.console.print(attempt_line(a), highlight=False, soft_wrap=True)


def attempt_line(a: dict[str, Any]) -> str:
    """One line for an ended attempt: why, its exit code, the step it reached, the trainer's last word."""
    code = "" if a["exit_code"] is None else f", exit {a['exit_code']}"
    return (f"attempt {a['number']} ended: {a['end_reason']}{code} at step {a['last_step']}"
            + (f" ({a['message']})" if a.get("message") else ""))


def _fmt(metrics: dict[str, Any], key: str, spec: str) -> str:
    return "-" if metrics.get(key) is None else format(metrics[key], spec)


def _run_columns() -> list[ProgressColumn]:
    return [TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  mlm-acc {task.fields[acc]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[attempt]}")]


def _run_fields(_job_id: str, view: View) -> dict[str, Any]:
    m = view.get("metrics") or {}
    attempt = f"attempt {view['current_attempt']}" if view["current_attempt"] else "pending"
    if view["phase"] not in (Phase.RUNNING, Phase.SUCCEEDED):
        attempt += f" ({view.get('startup_phase') or view['phase'].lower()})"
    fields = {"completed": view["step"], "loss": _fmt(m, "loss", ".3f"), "acc": _fmt(m, "mlm_accuracy", ".3f"),
              "tps": _fmt(m, "tokens_per_s", ",.0f"), "attempt": attempt}
    # A final heartbeat may carry no metrics: keep the last values shown.
    return {k: v for k, v in fields.items() if v != "-"}


def _status_columns() -> list[ProgressColumn]:
    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("attempt {task.fields[attempt]}")]


def _status_fields(job_id: str, view: View) -> dict[str, Any]:
    m = view.get("metrics") or {}
    phase = view["phase"] + (f" ({view['startup_phase']})" if view.get("startup_phase") else "")
    return {"completed": view["step"], "description": f"{job_id} {phase}", "loss": _fmt(m, "loss", ".4f"),
            "tps": _fmt(m, "tokens_per_s", ".0f"), "attempt": str(view["current_attempt"])}


RUN_BAR = Bar(columns=_run_columns, fields=_run_fields, report_ended_attempts=True, poll_s=0.5,
              initial={"description": "train", "loss": "-", "acc": "-", "tps": "-", "attempt": "pending"})
STATUS_BAR = Bar(columns=_status_columns, fields=_status_fields, poll_s=1.0,
                 initial={"loss": "-", "tps": "-", "attempt": "-"})
