"""Stream: rank slices, global order, exact resume on any world size, epochs, corruption, budget."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data.index import ShardIndex
from orchestrator.data.order import global_order
from orchestrator.data.stream import BatchStream, Cursor
from orchestrator.errors import DataError, PermanentError

B, SEED, WINDOW = 12, 11, 700


def take(shards: str, world: int, rank: int, steps: int, cursor: Cursor = Cursor(), micro: int = 1, **kw):
    stream = BatchStream(shards, global_batch_size=B, micro_batch_size=micro, rank=rank, world_size=world,
                         seed=SEED, shuffle_window=WINDOW, cursor=cursor, **kw)
    out = []
    try:
        for step in stream:
            out.append(step)
            if len(out) == steps:
                return out
    finally:
        stream.close()
    return out


def ids_of(steps) -> list[int]:
    return [int(i) for s in steps for i in s.sample_ids]


def test_two_ranks_are_disjoint_and_their_union_is_the_global_order(stdlib_shards):
    r0, r1 = take(stdlib_shards, 2, 0, 30), take(stdlib_shards, 2, 1, 30)
    order = global_order(ShardIndex.load(stdlib_shards), SEED, 0, WINDOW, 30 * B).tolist()
    assert not set(ids_of(r0)) & set(ids_of(r1))
    merged = [i for a, b in zip(r0, r1) for i in [*a.sample_ids.tolist(), *b.sample_ids.tolist()]]
    assert merged == order
    assert [s.cursor for s in r0] == [s.cursor for s in r1] == [Cursor(0, (g + 1) * B) for g in range(30)]
    assert len(r0[0].micro_batches) == B // 2 and r0[0].micro_batches[0]["input_ids"].shape == (1, 64)


def test_global_order_is_a_permutation_and_differs_per_epoch(stdlib_shards):
    index = ShardIndex.load(stdlib_shards)
    e0, e1 = global_order(index, SEED, 0, WINDOW), global_order(index, SEED, 1, WINDOW)
    assert sorted(e0) == sorted(e1) == list(range(index.total_rows))
    assert (e0 != e1).mean() > 0.9
    assert not (np.diff(e0[:200]) == 1).all()  # rows are shuffled, not just shards


def test_resume_from_a_cursor_reproduces_the_rest_exactly(stdlib_shards):
    full = take(stdlib_shards, 1, 0, 20, micro=4)
    rest = take(stdlib_shards, 1, 0, 12, cursor=full[7].cursor, micro=4)
    assert ids_of(rest) == ids_of(full[8:])
    for a, b in zip(rest, full[8:]):
        for ma, mb in zip(a.micro_batches, b.micro_batches):
            assert ma.keys() == mb.keys() and all((ma[k] == mb[k]).all() for k in ma)
    assert Cursor.from_dict(full[7].cursor.to_dict()) == full[7].cursor


@pytest.mark.parametrize("stop", ["mid_epoch", "epoch_boundary"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_resumption_table(stdlib_shards, stop, world):
    """Stop a 1-rank run, resume on `world` ranks: no sample missing or repeated, same order."""
    per_epoch = ShardIndex.load(stdlib_shards).total_rows // B
    stop_at = per_epoch // 3 if stop == "mid_epoch" else per_epoch
    total = per_epoch + 40
    reference = global_order(ShardIndex.load(stdlib_shards), SEED, 0, WINDOW, per_epoch * B).tolist()
    reference += global_order(ShardIndex.load(stdlib_shards), SEED, 1, WINDOW, 40 * B).tolist()
    first = take(stdlib_shards, 1, 0, stop_at)
    cursor = Cursor.from_dict(first[-1].cursor.to_dict())
    ranks = [take(stdlib_shards, world, r, total - stop_at, cursor=cursor) for r in range(world)]
    resumed = [i for g in range(total - stop_at) for r in range(world) for i in ranks[r][g].sample_ids.tolist()]
    assert ids_of(first) + resumed == reference
    epoch0 = ids_of(first) + resumed[:(per_epoch - stop_at) * B]
    assert len(set(epoch0)) == len(epoch0) == per_epoch * B


def test_indivisible_batch_names_the_world_sizes_that_work(stdlib_shards):
    with pytest.raises(PermanentError, match=r"world sizes that work: \[1, 2, 3, 6\]"):
        BatchStream(stdlib_shards, global_batch_size=12, micro_batch_size=2, rank=0, world_size=4, seed=1)


def test_corrupted_shard_is_detected_and_named(stdlib_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stdlib_shards, copy)
    index = ShardIndex.load(str(copy))
    victim = copy / index.shards[2].name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{victim}: sha256"):
        take(str(copy), 1, 0, 10_000, micro=12)
    with pytest.raises(DataError, match=str(victim)):
        index.verify_shard(index.shards[2].name)


def test_schema_mismatch_is_detected_and_named(stdlib_shards, tmp_path):
    import hashlib
    import json

    import pyarrow as pa

    copy = tmp_path / "copy"
    shutil.copytree(stdlib_shards, copy)
    meta = json.loads((copy / "index.json").read_text())
    victim = copy / meta["shards"][0]["name"]
    table = pa.ipc.open_file(victim).read_all()
    table = table.set_column(1, "length", table.column("length").cast(pa.int32()))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    data = sink.getvalue().to_pybytes()
    victim.write_bytes(data)
    meta["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (copy / "index.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=f"{victim}: schema"):
        take(str(copy), 1, 0, 10_000, micro=12)


def test_prefetch_stays_within_its_byte_budget(stdlib_shards):
    index = ShardIndex.load(stdlib_shards)
    largest = max(s.bytes for s in index.shards)
    stream = BatchStream(stdlib_shards, global_batch_size=B, micro_batch_size=1, rank=0, world_size=1, seed=SEED,
                         shuffle_window=50, prefetch_bytes=2 * largest)
    it = iter(stream)
    for _ in range(stream.batches_per_epoch + 5):
        next(it)
    peak = stream.peak_prefetch_bytes
    stream.close()
    total = sum(s.bytes for s in index.shards)
    # the documented bound: max(budget, the shards one window spans) + the shard being read
    assert total > 6 * largest and largest <= peak <= 4 * largest


def test_missing_shards_dir_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        BatchStream(str(tmp_path), global_batch_size=4, micro_batch_size=1, rank=0, world_size=1, seed=1)
    assert Path(tmp_path).exists()
