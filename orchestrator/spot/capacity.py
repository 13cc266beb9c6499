"""Spot capacity over time for the planner: how many of a job's N nodes the pool holds.

A timeline is a start count and a list of changes ``(time_s, delta)``. Two sources:

- a trace (``traces.py``), superposed: a trace of P instances stands for one pool of P; N nodes
  are ``m = round(N / P)`` independent copies of it (each from its own random point in the trace,
  repeated end to start when the run outlasts it), each scaled to N / m nodes. This keeps the
  trace's preemptions per node-hour and its burst sizes at any N (one scaled copy would keep
  the bursts' frequency but multiply their size);
- a rate: bursts arrive as a Poisson process with ``rate_per_node_h * N / burst`` per hour, each
  taking a geometric number of nodes with mean ``burst``; every taken node returns after an
  exponential time with mean ``return_s``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from orchestrator.errors import PermanentError
from orchestrator.spot.traces import Trace


@dataclass(frozen=True)
class Timeline:
    start: int                 # nodes held at time 0
    times_s: np.ndarray        # when the count changes (sorted)
    deltas: np.ndarray         # by how much (negative: nodes taken)
    horizon_s: float           # the timeline is complete up to here

    def drops_per_hour(self) -> float:
        return float((self.deltas < 0).sum()) / (self.horizon_s / 3600.0)

    def taken_per_node_hour(self) -> float:
        held = self.start + np.concatenate(([0], np.cumsum(self.deltas)))
        edges = np.concatenate(([0.0], self.times_s, [self.horizon_s]))
        node_h = float((held * np.diff(edges)).sum()) / 3600.0
        return float(-self.deltas[self.deltas < 0].sum()) / node_h if node_h > 0 else 0.0


def from_trace(trace: Trace, nodes: int, horizon_s: float, rng: np.random.Generator) -> Timeline:
    copies = max(1, round(nodes / trace.peak))
    per_copy = nodes / copies
    starts, times, deltas = 0, [], []
    for _ in range(copies):
        start, t, d = _one_copy(trace, per_copy, horizon_s, float(rng.uniform(0, trace.span_s)))
        starts += start
        times.append(t)
        deltas.append(d)
    t, d = np.concatenate(times), np.concatenate(deltas)
    order = np.argsort(t, kind="stable")
    return Timeline(starts, t[order], d[order], horizon_s)


def _one_copy(trace: Trace, nodes: float, horizon_s: float, offset_s: float) -> tuple[int, np.ndarray, np.ndarray]:
    """One copy of the trace scaled to ``nodes``, read from ``offset_s`` on, repeated cyclically."""
    counts = np.rint(trace.available * (nodes / trace.peak)).astype(int)
    laps = math.ceil((horizon_s + offset_s) / trace.span_s) + 1
    t = np.concatenate([trace.times_s + lap * trace.span_s for lap in range(laps)]) - offset_s
    c = np.tile(counts, laps)
    first = max(0, int(np.searchsorted(t, 0.0, side="right")) - 1)
    t, c = t[first:], c[first:]
    keep = (t > 0) & (t < horizon_s)
    d = np.diff(c, prepend=c[0])
    changed = keep & (d != 0)
    return int(c[0]), t[changed], d[changed]


def from_rate(rate_per_node_h: float, burst: float, return_s: float, nodes: int, horizon_s: float,
              rng: np.random.Generator) -> Timeline:
    if rate_per_node_h < 0 or burst < 1 or return_s < 0:
        raise PermanentError(f"need rate >= 0, burst >= 1 and return_s >= 0 "
                             f"(got {rate_per_node_h}, {burst}, {return_s})")
    events_per_s = rate_per_node_h * nodes / burst / 3600.0
    count = rng.poisson(events_per_s * horizon_s) if events_per_s > 0 else 0
    arrivals = np.sort(rng.uniform(0, horizon_s, count))
    sizes = rng.geometric(1.0 / burst, count)
    return _with_returns(arrivals, sizes, nodes, return_s, horizon_s, rng)


def _with_returns(arrivals, sizes, nodes: int, return_s: float, horizon_s: float,
                  rng: np.random.Generator) -> Timeline:
    """Take nodes at each arrival (never more than are held); each comes back after its delay."""
    held, returns, times, deltas = nodes, [], [], []
    for t, size in zip(arrivals, sizes):
        while returns and returns[0] <= t:
            back = heapq.heappop(returns)
            held += 1
            times.append(back)
            deltas.append(1)
        taken = int(min(size, held))
        if taken:
            held -= taken
            times.append(float(t))
            deltas.append(-taken)
            for delay in rng.exponential(return_s, taken) if return_s > 0 else np.zeros(taken):
                heapq.heappush(returns, float(t + delay))
    times.extend(r for r in returns if r < horizon_s)
    deltas.extend(1 for r in returns if r < horizon_s)
    order = np.argsort(np.asarray(times), kind="stable")
    return Timeline(nodes, np.asarray(times, dtype=float)[order], np.asarray(deltas, dtype=int)[order], horizon_s)
