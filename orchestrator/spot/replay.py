"""Replay a spot availability trace on the simulated cluster, compressed in time.

The trace's instance count is scaled to the worker group's size (``Trace.scaled``: the trace's
peak becomes ``max_workers``) and one trace hour lasts ``hour_s`` wall seconds. Whenever the
scaled count drops by k, k live nodes are taken (each with ``notice_s`` of notice, in wall
seconds: the notice is what the trainer must checkpoint within, so it is not compressed; 0 means
no notice) and the pool's capacity follows the count; when it rises, capacity returns and the
autoscaler launches into it if there is demand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from orchestrator.errors import PermanentError
from orchestrator.spot.capacity import Timeline
from orchestrator.spot.chaos import Chaos
from orchestrator.spot.traces import Trace


@dataclass(frozen=True)
class Change:
    at_s: float       # wall seconds from the replay's start
    capacity: int     # slots the pool holds from then on
    taken: int        # nodes to take now (the drop in capacity)


def schedule(trace: Trace, nodes: int, hour_s: float, start_h: float = 0.0,
             duration_h: float | None = None) -> list[Change]:
    """The capacity changes of ``trace`` (hours ``start_h`` .. ``start_h + duration_h``) for a pool
    of ``nodes``, at wall times compressed so that one trace hour lasts ``hour_s`` seconds."""
    if hour_s <= 0 or nodes < 1:
        raise PermanentError(f"need hour_s > 0 and nodes >= 1 (got {hour_s}, {nodes})")
    counts = trace.scaled(nodes)
    begin = start_h * 3600.0
    end = trace.span_s if duration_h is None else begin + duration_h * 3600.0
    first = max(0, int(np.searchsorted(trace.times_s, begin, side="right")) - 1)
    changes = [Change(0.0, int(counts[first]), 0)]
    for t, count in zip(trace.times_s[first + 1:], counts[first + 1:]):
        if t > end:
            break
        previous = changes[-1].capacity
        if count != previous:
            changes.append(Change(float((t - begin) / 3600.0 * hour_s), int(count), max(0, previous - int(count))))
    return changes

def replay(chaos: Chaos, node_type: str, changes: list[Change], notice_s: float,
           on_change: Callable[[Change, list[str]], None] | None = None) -> dict[str, int]:
    """Apply each change at its time; returns counts of nodes taken and capacity changes."""
    start = time.monotonic()
    totals = {"taken": 0, "missed": 0, "capacity_changes": 0}
    for change in changes:
        time.sleep(max(0.0, start + change.at_s - time.monotonic()))
        taken = _take(chaos, node_type, change.taken, notice_s)
        totals["taken"] += len(taken)
        totals["missed"] += change.taken - len(taken)  # nodes not up yet: only their slots go
        chaos.set_capacity(node_type, change.capacity)
        totals["capacity_changes"] += 1
        if on_change is not None:
            on_change(change, taken)
    chaos.wait()
    return totals


def _take(chaos: Chaos, node_type: str, count: int, notice_s: float) -> list[str]:
    live = chaos.live(node_type)
    victims = chaos.rng.sample(live, min(count, len(live)))
    for node in victims:
        chaos.preempt(node, notice_s)
    return [v.node_id for v in victims]


def rate_per_node_hour(changes: list[Change], nodes: int, hour_s: float) -> float:
    """Nodes taken per node-hour of the replayed pool (trace hours), for comparing with the trace."""
    if not changes:
        return 0.0
    times = np.array([c.at_s for c in changes] + [changes[-1].at_s])
    held = np.array([c.capacity for c in changes])
    node_hours = float((held * np.diff(times)).sum()) / hour_s
    return sum(c.taken for c in changes) / node_hours if node_hours > 0 else 0.0


def timeline_of(changes: list[Change], horizon_s: float) -> Timeline:
    """The replay as the planner's capacity timeline (wall seconds), so that a bench can set the
    planner's prediction beside a measured replay of the same changes."""
    if not changes:
        raise PermanentError("an empty replay has no timeline")
    capacities = np.array([c.capacity for c in changes])
    times = np.array([c.at_s for c in changes[1:]], dtype=float)
    return Timeline(int(capacities[0]), times, np.diff(capacities), horizon_s)
