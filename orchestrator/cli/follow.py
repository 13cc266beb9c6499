"""Follow a job's view to its end behind a progress bar: the one loop of `bertctl run` and `bertctl status -f`.

The two commands draw different bars (``RUN_BAR``, ``STATUS_BAR``); the loop (poll the view, update the
bar, stop at a terminal phase) is the same. Without a terminal (CI, ``nohup``, a pod log) a bar would
show only at the end, so a plain progress line is printed instead: at every phase or attempt change
and otherwise every ``BERTCTL_PROGRESS_EVERY_S`` seconds (default 30).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from orchestrator.cli.common import console
from orchestrator.manager.phases import TERMINAL, Phase

View = dict[str, Any]

ENV_PROGRESS_EVERY_S = "BERTCTL_PROGRESS_EVERY_S"
DEFAULT_PROGRESS_EVERY_S = 30.0


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
    if not console.is_terminal:
        return follow_plain(client, job_id, bar, progress_every_s())
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
    for line in _ended_attempt_lines(view, told):
        progress.console.print(line, highlight=False, soft_wrap=True)


def _ended_attempt_lines(view: View, told: set[int]) -> list[str]:
    """A line for each attempt that ended other than by succeeding since the last call."""
    lines = []
    for a in view["attempts"]:
        if a["state"] == "ended" and a["number"] not in told:
            told.add(a["number"])
            if a["end_reason"] != "succeeded":
                lines.append(attempt_line(a))
    return lines


def progress_every_s() -> float:
    raw = os.environ.get(ENV_PROGRESS_EVERY_S, "")
    try:
        value = float(raw) if raw else DEFAULT_PROGRESS_EVERY_S
    except ValueError:
        value = DEFAULT_PROGRESS_EVERY_S
    return value if math.isfinite(value) and value > 0 else DEFAULT_PROGRESS_EVERY_S


def follow_plain(client, job_id: str, bar: Bar, every_s: float) -> View:
    """``follow_job`` without a terminal: plain lines, each one complete (no cursor movement)."""
    told: set[int] = set()
    rate = _Rate()
    shown: tuple | None = None
    last_at = -math.inf
    while True:
        view = client.get(job_id)
        for line in _ended_attempt_lines(view, told) if bar.report_ended_attempts else []:
            console.print(line, highlight=False, soft_wrap=True)
        now = time.monotonic()
        rate.observe(now, view["step"])
        state = (view["phase"], view["current_attempt"], view.get("startup_phase"))
        terminal = Phase(view["phase"]) in TERMINAL
        if state != shown or now - last_at >= every_s or terminal:
            console.print(progress_line(job_id, view, rate.eta_s(view)), highlight=False, soft_wrap=True)
            shown, last_at = state, now
        if terminal:
            return view
        time.sleep(bar.poll_s)


class _Rate:
    """Steps per second since the step first moved (the ETA of a plain progress line)."""

    def __init__(self):
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def observe(self, now: float, step: int) -> None:
        # Until the step first moves the clock follows the newest view, so start-up time (Ray, the
        # engine, a checkpoint load) does not count as training time; a resume further back restarts it.
        if self.first is None or step <= self.first[1]:
            self.first = (now, step)
        self.last = (now, step)

    def eta_s(self, view: View) -> float | None:
        if not self.first or not self.last or self.last[1] <= self.first[1]:
            return None
        per_s = (self.last[1] - self.first[1]) / max(self.last[0] - self.first[0], 1e-9)
        return max(0, view["max_steps"] - view["step"]) / per_s


def progress_line(job_id: str, view: View, eta_s: float | None = None) -> str:
    """One line: ``job-1 RUNNING step 40/100 (40%)  loss 6.93  mlm-acc 0.052  13.9k tokens/s  attempt 1  ETA 0:01:05``."""
    m = view.get("metrics") or {}
    phase = view["phase"] + (f" ({view['startup_phase']})" if view.get("startup_phase") else "")
    pct = 100 * view["step"] // max(view["max_steps"], 1)
    parts = [f"{job_id} {phase} step {view['step']}/{view['max_steps']} ({pct}%)"]
    if m.get("loss") is not None:
        parts.append(f"loss {fmt_loss(m['loss'])}")
    if m.get("mlm_accuracy") is not None:
        parts.append(f"mlm-acc {m['mlm_accuracy']:.3f}")
    if m.get("tokens_per_s") is not None:
        parts.append(f"{fmt_count(m['tokens_per_s'])} tokens/s")
    parts.append(f"attempt {view['current_attempt']}")
    if eta_s is not None and Phase(view["phase"]) not in TERMINAL:
        parts.append(f"ETA {dt.timedelta(seconds=round(eta_s))}")
    return "  ".join(parts)


def fmt_loss(x: float | None) -> str:
    """A loss as people read it: ``6.93`` (two decimals; '-' when none was reported)."""
    return "-" if x is None else f"{x:.2f}"


def fmt_share(x: float | None) -> str:
    """A fraction as a percentage: ``81.2%`` ('-' when unknown)."""
    return "-" if x is None else f"{100 * x:.1f}%"


def fmt_seconds(x: float | None) -> str:
    """A duration: ``12.3s`` under a minute, ``0:04:05`` above ('-' when unknown)."""
    if x is None:
        return "-"
    return f"{x:.1f}s" if x < 60 else str(dt.timedelta(seconds=round(x)))


def fmt_count(x: float | None) -> str:
    """A count or rate with a unit prefix: ``950``, ``13.9k``, ``1.2M`` ('-' when none)."""
    if x is None:
        return "-"
    if round(abs(x), 1) < 1000:
        return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"
    for unit, scale in (("k", 1e3), ("M", 1e6)):
        if round(abs(x) / scale, 1) < 1000:  # 999,960 is 1.0M, not 1000.0k
            return f"{x / scale:.1f}{unit}"
    return f"{x / 1e9:.1f}G"


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
    fields = {"completed": view["step"], "loss": fmt_loss(m.get("loss")), "acc": _fmt(m, "mlm_accuracy", ".3f"),
              "tps": fmt_count(m.get("tokens_per_s")), "attempt": attempt}
    # A final heartbeat may carry no metrics: keep the last values shown.
    return {k: v for k, v in fields.items() if v != "-"}


def _status_columns() -> list[ProgressColumn]:
    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("attempt {task.fields[attempt]}")]


def _status_fields(job_id: str, view: View) -> dict[str, Any]:
    m = view.get("metrics") or {}
    phase = view["phase"] + (f" ({view['startup_phase']})" if view.get("startup_phase") else "")
    return {"completed": view["step"], "description": f"{job_id} {phase}", "loss": fmt_loss(m.get("loss")),
            "tps": fmt_count(m.get("tokens_per_s")), "attempt": str(view["current_attempt"])}


RUN_BAR = Bar(columns=_run_columns, fields=_run_fields, report_ended_attempts=True, poll_s=0.5,
              initial={"description": "train", "loss": "-", "acc": "-", "tps": "-", "attempt": "pending"})
STATUS_BAR = Bar(columns=_status_columns, fields=_status_fields, poll_s=1.0,
                 initial={"loss": "-", "tps": "-", "attempt": "-"})
