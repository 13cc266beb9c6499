"""The data ledger: one short value per step that proves which samples every step so far consumed.

Each step's global batch is summarised by the sum of a 32-bit hash of each sample id. A sum does
not depend on how the batch was split over ranks, so ranks add their own share to the all-reduce
they already do per step and rank 0 gets the step's sum; a sum of at most 2**21 values below 2**32
stays exact in float64. Steps are chained: ``link(previous, step, sum)``, so the value at step s
covers every step up to s, and a few kept values check the whole run. ``planned_ledger`` recomputes
the same chain from the manifest alone (the order is a pure function of seed, epoch, shuffle window
and global batch), without anything stored about the run.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np

from orchestrator.data.index import ShardIndex
from orchestrator.data.order import EpochOrder

GENESIS = "0" * 16  # the chain's value before step 1
MAX_EXACT_BATCH = 1 << 21  # sample hashes below 2**32: a float64 sum of this many stays exact

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def sample_hashes(sample_ids: np.ndarray) -> np.ndarray:
    """A 32-bit mix of each sample id (splitmix64's finaliser, high half), as uint64."""
    z = np.asarray(sample_ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return (z ^ (z >> np.uint64(31))) >> np.uint64(32)


def batch_sum(sample_ids: np.ndarray) -> int:
    """What one rank adds to the step's all-reduce for the ids it consumed."""
    return int(sample_hashes(sample_ids).sum(dtype=np.uint64))


def link(previous: str, step: int, total: int) -> str:
    """The chain's value after ``step``, whose global batch summed to ``total``."""
    return hashlib.sha256(f"{previous}:{step}:{total}".encode()).hexdigest()[:16]


def planned_ledger(index: ShardIndex, *, seed: int, shuffle_window: int, global_batch_size: int,
                   steps: int) -> Iterator[tuple[int, str]]:
    """(step, chain value) for steps 1..``steps`` of an uninterrupted run from the start."""
    per_epoch = index.total_rows // global_batch_size
    value, order = GENESIS, None
    for step in range(1, steps + 1):
        epoch, g = divmod(step - 1, per_epoch)
        if order is None or order.epoch != epoch:
            order = EpochOrder(index, seed, epoch, max(1, shuffle_window))
        positions = np.arange(g * global_batch_size, (g + 1) * global_batch_size, dtype=np.int64)
        value = link(value, step, batch_sum(order.sample_ids(order.stream_index(positions))))
        yield step, value


class LedgerPoint:
    """One recorded chain value: which attempt reported it, at which step, on how many workers."""

    __slots__ = ("attempt", "step", "digest", "world_size")

    def __init__(self, attempt: int, step: int, digest: str, world_size: int | None = None):
        self.attempt, self.step, self.digest, self.world_size = attempt, step, digest, world_size


def audit(points: list[LedgerPoint], planned: dict[int, str]) -> tuple[int | None, str]:
    """(the first step whose recorded value differs from the plan or None, a sentence for the user)."""
    ordered = sorted(points, key=lambda p: (p.step, p.attempt))
    for p in ordered:
        if planned.get(p.step) != p.digest:
            return p.step, (f"step {p.step} (attempt {p.attempt}) did not consume its planned samples: the "
                            "ledger diverges there; every step before it matches")
    attempts = len({p.attempt for p in points})
    return None, (f"every step consumed exactly its planned samples, across {attempts} attempt(s) and "
                  f"{_resizes(points)} resize(s) ({len(points)} recorded steps checked)")


def _resizes(points: list[LedgerPoint]) -> int:
    """World-size changes along the run, within an attempt and from one attempt to the next."""
    sizes = [p.world_size for p in sorted(points, key=lambda p: (p.attempt, p.step)) if p.world_size]
    return sum(1 for a, b in zip(sizes, sizes[1:]) if a != b)
