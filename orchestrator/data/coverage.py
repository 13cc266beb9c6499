"""Which prepared inputs a run shorter than an epoch reads, said before the run starts.

The epoch order (``order.py``) reads the shards in a seeded permutation and shuffles rows only inside
windows of ``shuffle_window`` rows. A corpus prepared as one large shard per input file therefore
feeds a short run from the first inputs of that permutation alone: a quarter of an epoch over four
files of similar size can read one of them, and a model pretrained that way never sees the others.
"""

from __future__ import annotations

import re

from orchestrator.data.index import ShardIndex
from orchestrator.data.order import EpochOrder

_UNIT = re.compile(r"^shard-(\d+)-")
_SHARDS_PER_INPUT = 8   # what the advice aims at: enough for the shard order to interleave the inputs


def unit_of(shard_name: str) -> int:
    """The prepared input (unit) a shard came from; its number is in the shard's name."""
    found = _UNIT.match(shard_name)
    return int(found.group(1)) if found else -1


def units_read(index: ShardIndex, seed: int, window: int, rows: int) -> set[int]:
    """Units the first ``rows`` samples of epoch 0 can come from (every unit from a whole epoch on).

    The samples at positions [0, rows) come from the windows that hold them, so the shards those
    windows span are an upper bound on what is read; anything outside them is certainly not read."""
    order = EpochOrder(index, seed, 0, max(1, window))
    if rows >= order.total:
        return {unit_of(s.name) for s in index.shards}
    span = min(order.total, -(-rows // order.window) * order.window)
    last_slot = order.slot_of(span - 1)
    return {unit_of(index.shards[int(i)].name) for i in order.shard_perm[:last_slot + 1]}


def coverage_warning(index: ShardIndex, seed: int, window: int, rows: int,
                     labels: dict[int, str] | None = None) -> str | None:
    """A sentence naming the inputs a run of ``rows`` samples never reads, with the fix; None when it reads all."""
    units = {unit_of(s.name) for s in index.shards}
    missed = sorted(units - units_read(index, seed, window, rows))
    if not missed:
        return None
    names = ", ".join((labels or {}).get(u, f"input {u}") for u in missed)
    shard_mib, window_rows = _advice(index)
    return (f"this run reads {rows:,} of the {index.total_rows:,} rows of an epoch, and in the seeded shard order "
            f"it never reaches {len(missed)} of the {len(units)} prepared inputs: {names}. To mix the inputs, "
            f"prepare the corpus again into a new data.shards URI with smaller shards (data.prepare.shard_bytes "
            f"or `bertctl prepare --shard-mb`; about {shard_mib:g} MiB gives every input {_SHARDS_PER_INPUT} or "
            f"more), and set data.shuffle_window to a few shards' rows (about {window_rows:,}).")


def _advice(index: ShardIndex) -> tuple[float, int]:
    """(shard size in MiB giving the smallest input enough shards, a window of about four such shards)."""
    per_unit: dict[int, int] = {}
    for s in index.shards:
        per_unit[unit_of(s.name)] = per_unit.get(unit_of(s.name), 0) + s.bytes
    target = min(per_unit.values()) / _SHARDS_PER_INPUT / 2**20
    mib = 1.0
    while mib > target and mib > 1 / 16:   # a power of two, at least 64 KiB (the smallest allowed)
        mib /= 2
    while mib * 2 <= target and mib < 128:
        mib *= 2
    rows_per_byte = index.total_rows / max(1, sum(s.bytes for s in index.shards))
    return mib, max(1000, round(4 * mib * 2**20 * rows_per_byte, -3))
