"""JSON views of jobs for the API: what a user sees, never a token or a handle's secret."""

from __future__ import annotations

from typing import Any

from orchestrator.manager.goodput import job_goodput
from orchestrator.manager.phases import Phase
from orchestrator.manager.store import Store

_ATTEMPT_FIELDS = ("number", "state", "created_at", "ended_at", "end_reason", "exit_code", "message",
                   "final_status", "last_heartbeat_at", "heartbeats", "startup_phase", "resumed_from_step", "first_step",
                   "last_step", "steps_lost", "recovery_s", "checkpoint_seconds", "metrics")
_JOB_FIELDS = ("id", "name", "submission_id", "backend", "phase", "message", "created_at", "updated_at",
               "ended_at", "current_attempt", "restarts_used", "next_launch_at", "cancel_requested",
               "max_steps", "step", "metrics")


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in _JOB_FIELDS}


def _startup_phase(job: dict[str, Any], attempts: list[dict[str, Any]]) -> str | None:
    """What the current attempt last said it does before training; None once it trains (RUNNING)."""
    if job["phase"] != Phase.LAUNCHING.value:
        return None
    current = next((a for a in attempts if a["number"] == job["current_attempt"]), None)
    return current["startup_phase"] if current else None


def job_detail(store: Store, job: dict[str, Any], now: float, with_manifest: bool = True) -> dict[str, Any]:
    attempts = store.attempts(job["id"])
    checkpoints = store.checkpoints(job["id"])
    newest = max(checkpoints, key=lambda c: (c["step"], c["id"]), default=None)
    out = job_summary(job)
    out["attempts"] = [{k: a[k] for k in _ATTEMPT_FIELDS} for a in attempts]
    out["startup_phase"] = _startup_phase(job, attempts)
    out["checkpoint"] = None if newest is None else {k: newest[k] for k in ("step", "uri", "world_size",
                                                                           "attempt", "created_at")}
    out["checkpoints"] = len(checkpoints)
    out["goodput"] = job_goodput(job, attempts, now, store.events(job["id"], type_="resized", limit=None))
    if with_manifest:
        out["manifest"] = job["manifest"]
    return out
