"""The data path on S3 (moto on loopback): prepare and stream give the same bytes with and without faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.data.index import ShardIndex
from orchestrator.data.prepare import PrepareConfig, prepare
from orchestrator.data.stream import BatchStream
from orchestrator.errors import DataError
from orchestrator.storage import storage_for


def upload_dir(local: str, uri: str) -> None:
    store = storage_for(uri)
    for p in sorted(Path(local).rglob("*")):
        if p.is_file():
            store.write_bytes(f"{uri}/{p.relative_to(local).as_posix()}", p.read_bytes())


def stream_steps(uri: str, steps: int) -> list:
    s = BatchStream(uri, global_batch_size=16, micro_batch_size=4, rank=1, world_size=2, seed=5, shuffle_window=300,
                    prefetch_bytes=2**20)
    out = []
    try:
        for step in s:
            out.append(step)
            if len(out) == steps:
                return out
    finally:
        s.close()


def same_steps(a, b) -> bool:
    return all((x.sample_ids == y.sample_ids).all() and x.cursor == y.cursor and
               all((mx[k] == my[k]).all() for mx, my in zip(x.micro_batches, y.micro_batches) for k in mx)
               for x, y in zip(a, b)) and len(a) == len(b)


def test_prepare_and_stream_through_faults_match_local(small_corpus, small_vocab, tmp_path, s3_fault_proxy):
    proxy, bucket = s3_fault_proxy
    cfg = dict(seq_len=32, vocab=small_vocab, vocab_size=None, use_ray=False, shard_bytes=8192)
    local = prepare(PrepareConfig(inputs=small_corpus, output=str(tmp_path / "local"), **cfg), progress=False)
    upload_dir(str(Path(small_corpus[0]).parent), f"s3://{bucket}/corpus")
    proxy.slowdown_rate, proxy.drop_rate = 0.1, 0.1
    remote = prepare(PrepareConfig(inputs=[f"s3://{bucket}/corpus"], output=f"s3://{bucket}/shards", **cfg),
                     progress=False)
    assert proxy.stats["slowdown"] > 0 and proxy.stats["dropped"] > 0
    store = storage_for(remote.uri)
    for s in local.shards:
        assert store.read_bytes(remote.shard_uri(s.name)) == Path(local.shard_uri(s.name)).read_bytes()
    assert [s.sha256 for s in remote.shards] == [s.sha256 for s in local.shards]
    assert same_steps(stream_steps(f"s3://{bucket}/shards", 40), stream_steps(local.uri, 40))


def test_corrupt_shard_on_s3_is_named(small_corpus, small_vocab, s3_env):
    out = f"s3://{s3_env}/shards"
    index = prepare(PrepareConfig(inputs=small_corpus[:2], output=out, seq_len=32, vocab=small_vocab,
                                  vocab_size=None, use_ray=False, shard_bytes=8192), progress=False)
    store, victim = storage_for(out), index.shard_uri(index.shards[1].name)
    data = bytearray(store.read_bytes(victim))
    data[100] ^= 0x80
    store.write_bytes(victim, bytes(data))
    with pytest.raises(DataError, match=f"{victim}: sha256"):
        ShardIndex.load(out).verify_shard(index.shards[1].name)
    with pytest.raises(DataError, match=f"{victim}"):
        stream_steps(out, 10_000)
    with pytest.raises(DataError, match=f"s3://{s3_env}/nothing/index.json"):
        ShardIndex.load(f"s3://{s3_env}/nothing")
    assert np.int64(1)
