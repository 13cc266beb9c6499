"""Spot availability traces (``spot/traces_data/``, a copy of real AWS traces): how many instances a real pool held over time.

Two formats, told apart by their rows:

- event list (Parcae): ``time_ms,add|remove,node_name``, one event a line;
- step function (Bamboo): ``time_s,instances_available``.

Both become one ``Trace``: the times (seconds from the start) at which the available count
changed and the count from then on. Simultaneous events (a burst) are one step.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.errors import PermanentError

_EVENT_KINDS = {"add": 1, "remove": -1}


@dataclass(frozen=True)
class Trace:
    name: str
    times_s: np.ndarray      # strictly increasing, starting at 0
    available: np.ndarray    # instances held from times_s[i] until times_s[i + 1]
    span_s: float            # the trace's length (its last row's time)

    @property
    def peak(self) -> int:
        return int(self.available.max())

    def steps(self) -> np.ndarray:
        """Change in the count at each time (the first step is the initial count)."""
        return np.diff(self.available, prepend=0)

    def removal_times_and_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """When instances were taken and how many at once (a burst takes several)."""
        steps = self.steps()
        taken = steps < 0
        return self.times_s[taken], -steps[taken]

    def instance_hours(self) -> float:
        durations = np.diff(np.append(self.times_s, self.span_s))
        return float((self.available * durations).sum() / 3600.0)

    def preemptions_per_instance_hour(self) -> float:
        _, sizes = self.removal_times_and_sizes()
        hours = self.instance_hours()
        return float(sizes.sum()) / hours if hours > 0 else 0.0

    def scaled(self, nodes: int) -> np.ndarray:
        """The count scaled to a pool of ``nodes`` at the trace's peak (rounded; never below 0)."""
        if self.peak <= 0:
            return np.zeros_like(self.available)
        return np.rint(self.available * (nodes / self.peak)).astype(int)


def load_trace(path: str | Path) -> Trace:
    """Read either format; a file that is neither raises a PermanentError naming the line."""
    path = Path(path)
    try:
        rows = [r for r in csv.reader(path.read_text().splitlines()) if r and not r[0].startswith("#")]
    except OSError as exc:
        raise PermanentError(f"cannot read the trace {path}: {exc}") from exc
    if not rows:
        raise PermanentError(f"the trace {path} is empty")
    if len(rows[0]) == 3:
        times, counts = _from_events(rows, path)
    elif len(rows[0]) == 2:
        times, counts = _from_steps(rows, path)
    else:
        raise PermanentError(f"{path}: expected `time_ms,add|remove,node` or `time_s,instances` rows, "
                             f"got {rows[0]!r}")
    return _compact(path.name, times, counts)


def _from_events(rows: list[list[str]], path: Path) -> tuple[list[float], list[int]]:
    times, counts, held = [], [], 0
    for lineno, row in enumerate(rows, 1):
        try:
            t_ms, kind = float(row[0]), row[1].strip()
            held += _EVENT_KINDS[kind]
        except (ValueError, KeyError, IndexError):
            raise PermanentError(f"{path} line {lineno}: expected time_ms,add|remove,node; got {row!r}") from None
        times.append(t_ms / 1000.0)
        counts.append(max(held, 0))
    return times, counts


def _from_steps(rows: list[list[str]], path: Path) -> tuple[list[float], list[int]]:
    times, counts = [], []
    for lineno, row in enumerate(rows, 1):
        try:
            times.append(float(row[0]))
            counts.append(int(float(row[1])))
        except (ValueError, IndexError):
            raise PermanentError(f"{path} line {lineno}: expected time_s,instances; got {row!r}") from None
    return times, counts


def _compact(name: str, times: list[float], counts: list[int]) -> Trace:
    """One entry per distinct time (the last count at that time wins), changes only."""
    t = np.asarray(times, dtype=float)
    c = np.asarray(counts, dtype=int)
    if np.any(np.diff(t) < 0):
        raise PermanentError(f"the trace {name} is not in time order")
    last_at_time = np.append(t[1:] != t[:-1], True)
    t, c = t[last_at_time] - t[0], c[last_at_time]
    changed = np.append(True, c[1:] != c[:-1])
    return Trace(name, t[changed], c[changed], float(t[-1]) if len(t) else 0.0)
