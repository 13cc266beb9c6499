"""Goodput: how much of a job's wall time went into steps that were kept.

Per attempt: steps lost (steps past the newest committed checkpoint when it failed), recovery
time (previous failure -> this attempt's first new step), time checkpointing (the trainer's
cumulative checkpoint_seconds), the worker-group resizes of an elastic attempt (each a pause and
the steps it lost, from its 'resized' events), productive seconds (kept steps x mean step time
without checkpointing or resize pauses). Per job: the sums and productive_fraction = productive
seconds / wall time.
"""

from __future__ import annotations

from typing import Any


def attempt_goodput(att: dict[str, Any], now: float, resizes: list[dict[str, Any]] = ()) -> dict[str, Any]:
    wall = max(0.0, (att["ended_at"] or now) - att["created_at"])
    ckpt = att["checkpoint_seconds"] or 0.0
    paused = sum(r.get("pause_s") or 0.0 for r in resizes)
    resize_lost = sum(r.get("steps_lost") or 0 for r in resizes)
    productive = 0.0
    first, last = att["first_step"], att["last_step"]
    if first is not None and att["first_step_at"] is not None and last > first:
        span = max(0.0, att["last_step_at"] - att["first_step_at"])
        step_s = max(0.0, span - ckpt - paused) / (last - first)
        kept = max(0, last - (att["resumed_from_step"] or 0) - (att["steps_lost"] or 0) - resize_lost)
        productive = kept * step_s
    return {"attempt": att["number"], "wall_s": round(wall, 3), "steps_lost": (att["steps_lost"] or 0) + resize_lost,
            "recovery_s": att["recovery_s"], "checkpoint_s": round(ckpt, 3), "resizes": len(resizes),
            "resize_s": round(paused, 3), "productive_s": round(productive, 3)}


def job_goodput(job: dict[str, Any], attempts: list[dict[str, Any]], now: float,
                resize_events: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """``resize_events``: the job's 'resized' events (their data holds pause_s and steps_lost)."""
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for e in resize_events:
        by_attempt.setdefault(e["attempt"], []).append(e.get("data") or {})
    per = [attempt_goodput(a, now, by_attempt.get(a["number"], [])) for a in attempts]
    start = attempts[0]["created_at"] if attempts else job["created_at"]
    wall = max(0.0, (job["ended_at"] or now) - start)
    productive = sum(p["productive_s"] for p in per)
    return {
        "wall_s": round(wall, 3),
        "productive_s": round(productive, 3),
        "productive_fraction": round(min(1.0, productive / wall), 4) if wall > 0 else None,
        "steps_lost": sum(p["steps_lost"] for p in per),
        "recovery_s": round(sum(p["recovery_s"] or 0.0 for p in per), 3),
        "checkpoint_s": round(sum(p["checkpoint_s"] for p in per), 3),
        "resizes": sum(p["resizes"] for p in per),
        "resize_s": round(sum(p["resize_s"] for p in per), 3),
        "restarts": job["restarts_used"],
        "attempts": per,
    }
