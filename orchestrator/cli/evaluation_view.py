"""`bertctl status`'s evaluation lines: the newest scores per task of spec.evaluation, and what runs."""

from __future__ import annotations

from collections import Counter
from typing import Any


def evaluation_lines(spec: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """``spec``: the job's spec.evaluation; ``found``: GET /v1/jobs/{id}/evaluations."""
    evals = found.get("evaluations") or []
    states = Counter(e["state"] for e in evals)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none yet"
    lines = [f"evaluation every {spec.get('every_checkpoints', 1)} checkpoint(s): {summary}"]
    latest = found.get("latest") or {}
    failures = _newest_failures(evals)
    for task in spec.get("tasks", []):
        name = task["name"]
        if name in latest:
            got = latest[name]
            shown = "  ".join(f"{k} {v:.4f}" for k, v in got["metrics"].items())
            lines.append(f"  {name:<14} step {got['step']:<8} {shown}")
        elif name in failures:
            step, message = failures[name]
            lines.append(f"  {name:<14} failed at step {step}: {message}")
        else:
            lines.append(f"  {name:<14} -")
    return lines


def _newest_failures(evals: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for ev in evals:  # oldest step first: the newest failure wins
        for t in ev.get("tasks", []):
            if t["status"] != "succeeded":
                out[t["task"]] = (ev["step"], (t.get("message") or "")[:200])
    return out
