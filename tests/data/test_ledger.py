"""The data ledger: the per-step chain proves each step's samples whatever the world size."""

from __future__ import annotations

import numpy as np
from orchestrator.data import ledger
from orchestrator.data.ledger import GENESIS, LedgerPoint, audit, batch_sum, link, planned_ledger
from orchestrator.data.stream import BatchStream


def test_sample_hashes_are_32_bit_and_differ():
    h = ledger.sample_hashes(np.arange(100_000))
    assert h.max() < 2**32 and len(np.unique(h)) > 99_990


def test_a_batch_sum_is_the_same_however_the_batch_is_split_over_ranks():
    ids = np.random.default_rng(0).permutation(10_000)[:512]
    whole = batch_sum(ids)
    assert sum(batch_sum(part) for part in np.array_split(ids, 4)) == whole
    assert float(sum(float(batch_sum(part)) for part in np.array_split(ids, 8))) == whole  # exact in float64
    other = ids.copy()
    other[7] = 10_001  # one sample swapped for another
    assert batch_sum(other) != whole


def test_the_chain_covers_every_earlier_step():
    a = link(link(GENESIS, 1, 10), 2, 20)
    assert a != link(link(GENESIS, 1, 11), 2, 20)  # an earlier step changed: the later value changes
    assert a != link(link(GENESIS, 1, 20), 2, 10)  # the same samples in another step order
    assert len(a) == 16


def _stream_ledger(shards, world: int, steps: int, cursor=None, start=GENESIS) -> dict[int, str]:
    """What the ranks of a run would report: each rank's sums added per step, then chained."""
    streams = [BatchStream(shards, global_batch_size=8, micro_batch_size=2, rank=r, world_size=world, seed=3,
                           shuffle_window=16, **({"cursor": cursor} if cursor else {})) for r in range(world)]
    iters, out, value = [iter(s) for s in streams], {}, start
    first = (cursor.sample // 8 + 1) if cursor else 1
    for step in range(first, first + steps):
        total = sum(batch_sum(next(it).sample_ids) for it in iters)
        value = out[step] = link(value, step, total)
    for s in streams:
        s.close()
    return out


def test_the_plan_equals_what_runs_on_any_world_size_and_after_a_resume(stdlib_shards):
    from orchestrator.data.index import ShardIndex
    from orchestrator.data.stream import Cursor

    index = ShardIndex.load(stdlib_shards)
    per_epoch = index.total_rows // 8
    steps = per_epoch + 3  # into the second epoch
    plan = dict(planned_ledger(index, seed=3, shuffle_window=16, global_batch_size=8, steps=steps))
    assert _stream_ledger(stdlib_shards, 1, steps) == plan
    two = _stream_ledger(stdlib_shards, 2, 4)
    resumed = _stream_ledger(stdlib_shards, 4, steps - 4, cursor=Cursor(0, 32), start=two[4])
    assert {**two, **resumed} == plan


def test_audit_passes_a_resized_run_and_names_the_first_tampered_step():
    plan = {s: link(GENESIS, s, s) for s in range(1, 11)}
    points = [LedgerPoint(1, s, plan[s], 2) for s in (2, 4, 6)] + [LedgerPoint(2, s, plan[s], 4) for s in (5, 8, 10)]
    step, message = audit(points, plan)
    assert step is None and "across 2 attempt(s) and 1 resize(s)" in message
    points[4] = LedgerPoint(2, 8, "f" * 16, 4)
    step, message = audit(points, plan)
    assert step == 8 and "step 8 (attempt 2)" in message

