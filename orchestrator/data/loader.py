"""Background shard reader with read-ahead bounded in bytes.

One thread reads whole shards in an epoch's shard order (crossing into the next epochs), checks
each against the index and hands numpy arrays to the stream. Bytes held (queued or still used by
the stream) stay within ``budget`` - except that one more shard is always allowed when the stream
is waiting for data it needs, so a shard larger than the budget (or a shuffle window spanning more
shards than fit in it) cannot deadlock it: the peak is at most max(budget, the shards one shuffle window spans) + one shard. The sha256 of a shard is computed
on the bytes already read (never a second read) and only on the first read in this process:
later epochs trust the verified bytes' digest, size, schema and row count.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque

import numpy as np

from orchestrator.data.index import ShardIndex, check_shard_bytes
from orchestrator.storage import storage_for

_VERIFIED: set[tuple[str, str]] = set()   # (shard uri, sha256) verified by this process
_VERIFIED_LOCK = threading.Lock()


def read_shard(index: ShardIndex, name: str, verify: str = "once") -> dict[str, np.ndarray]:
    """Read, check and decode one shard. verify: 'always' | 'once' (per process) | 'never'."""
    info = index.info(name)
    uri = index.shard_uri(name)
    key = (uri, info.sha256)
    # One read: the storage's SDK already retried within its budget (docs/data.md, "Retries"); a
    # TemporaryError it still raises ends the attempt, and the manager retries that after its delay.
    data = storage_for(uri).read_bytes(uri)
    need = verify == "always" or (verify == "once" and key not in _VERIFIED)
    table = check_shard_bytes(index, info, data, hashlib.sha256(data).hexdigest() if need else None)
    if need:
        with _VERIFIED_LOCK:
            _VERIFIED.add(key)
    return decode(table, index.seq_len)


def decode(table, seq_len: int) -> dict[str, np.ndarray]:
    ids = [c.values.to_numpy(zero_copy_only=False).reshape(-1, seq_len) for c in table.column(0).chunks]
    out = {"input_ids": ids[0] if len(ids) == 1 else np.concatenate(ids)}
    for name in ("length", "a_end", "next_sentence_label"):
        out[name] = table.column(name).to_numpy()
    return out


class ShardLoader:
    """Yields (epoch, slot, arrays, nbytes) in order from (start_epoch, start_slot) on, endlessly."""

    def __init__(self, index: ShardIndex, perm_of_epoch, start_epoch: int, start_slot: int, budget: int,
                 verify: str = "once"):
        self.index, self.perm_of_epoch, self.budget, self.verify = index, perm_of_epoch, budget, verify
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._held = 0
        self._waiting = False
        self._stop = False
        self.peak_held = 0
        self._thread = threading.Thread(target=self._run, args=(start_epoch, start_slot), daemon=True,
                                        name="bertctl-shard-loader")
        self._thread.start()

    def _run(self, epoch: int, slot: int) -> None:
        try:
            while not self._stop:
                perm = self.perm_of_epoch(epoch)
                for s in range(slot, len(perm)):
                    info = self.index.shards[int(perm[s])]
                    if not self._reserve(info.bytes):
                        return
                    arrays = read_shard(self.index, info.name, self.verify)
                    self._put((epoch, s, arrays, info.bytes))
                epoch, slot = epoch + 1, 0
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self._put(exc)

    def _reserve(self, size: int) -> bool:
        with self._cond:
            # Over the budget only while the consumer waits with nothing queued for it: once one
            # shard is queued, a slow-to-wake consumer must not let the loader run ahead unbounded.
            while (not self._stop and self._held > 0 and self._held + size > self.budget
                   and not (self._waiting and not self._queue)):
                self._cond.wait()
            self._held += size
            self.peak_held = max(self.peak_held, self._held)
            return not self._stop

    def _put(self, item) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify_all()

    def get(self):
        with self._cond:
            self._waiting = True
            self._cond.notify_all()
            while not self._queue:
                self._cond.wait()
            self._waiting = False
            item = self._queue.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, size: int) -> None:
        with self._cond:
            self._held -= size
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)
