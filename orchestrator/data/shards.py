"""Writing one unit's rows as Arrow IPC shards (atomic per shard, deterministic bytes)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from orchestrator.data.index import ShardInfo, shard_schema
from orchestrator.storage import join, storage_for

BATCH_ROWS = 2048


def row_bytes(seq_len: int, itemsize: int) -> int:
    return seq_len * itemsize + 5  # ids + length (2) + a_end (2) + label (1)


def to_batch(arrays: dict[str, np.ndarray], seq_len: int, vocab_size: int) -> pa.RecordBatch:
    schema = shard_schema(seq_len, vocab_size)
    ids = pa.FixedSizeListArray.from_arrays(pa.array(arrays["input_ids"].ravel(), schema.field(0).type.value_type),
                                            seq_len)
    cols = [ids, pa.array(arrays["length"]), pa.array(arrays["a_end"]), pa.array(arrays["next_sentence_label"])]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def encode_shard(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        for start in range(0, batch.num_rows, BATCH_ROWS):
            writer.write_batch(batch.slice(start, BATCH_ROWS))
    return sink.getvalue().to_pybytes()


def write_shards(output: str, prefix: str, arrays: dict[str, np.ndarray], seq_len: int, vocab_size: int,
                 shard_bytes: int) -> list[ShardInfo]:
    """Cut rows into shards of about ``shard_bytes``; each is written whole (atomically)."""
    n = len(arrays["length"])
    per_shard = max(1, shard_bytes // row_bytes(seq_len, arrays["input_ids"].dtype.itemsize))
    store, out = storage_for(output), []
    for k, start in enumerate(range(0, n, per_shard)):
        part = {name: a[start:start + per_shard] for name, a in arrays.items()}
        data = encode_shard(to_batch(part, seq_len, vocab_size))
        name = f"{prefix}-{k:04d}.arrow"
        store.write_bytes(join(output, name), data)
        out.append(ShardInfo(name=name, rows=len(part["length"]), bytes=len(data),
                             sha256=hashlib.sha256(data).hexdigest()))
    return out
