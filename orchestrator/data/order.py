"""The global sample order: a pure function of (seed, epoch), independent of world size.

Two-level shuffle: the shards are permuted, their rows concatenated into one *stream*, and the
stream is cut into windows of ``window`` rows, each permuted on its own. Position p of the epoch
order is therefore stream row ``(p // w) * w + perm_{p // w}[p % w]`` - computable for any p
without reading anything, which is what makes an exact resume at any cursor cheap.
"""

from __future__ import annotations

import numpy as np

from orchestrator.data.index import ShardIndex


class EpochOrder:
    def __init__(self, index: ShardIndex, seed: int, epoch: int, window: int):
        self.seed, self.epoch, self.window = seed, epoch, window
        rows = np.array([s.rows for s in index.shards], dtype=np.int64)
        self.total = int(rows.sum())
        self.shard_perm = np.random.default_rng([seed, epoch, 0]).permutation(len(rows))
        ordered = rows[self.shard_perm]
        self.slot_start = np.concatenate([[0], np.cumsum(ordered)])          # stream offset of each slot
        self.first_id = np.concatenate([[0], np.cumsum(rows)])[:-1]          # global id of a shard's row 0
        self._perms: dict[int, np.ndarray] = {}

    def _block_perm(self, b: int) -> np.ndarray:
        perm = self._perms.get(b)
        if perm is None:
            size = min(self.window, self.total - b * self.window)
            perm = np.random.default_rng([self.seed, self.epoch, 1, b]).permutation(size)
            if len(self._perms) > 64:
                self._perms.clear()
            self._perms[b] = perm
        return perm

    def stream_index(self, positions: np.ndarray) -> np.ndarray:
        if self.window == 1:  # no row shuffle: the stream order itself
            return positions.copy()
        blocks = positions // self.window
        b0, b1 = int(blocks.min()), int(blocks.max())
        if b0 == b1:  # positions are contiguous: usually one window
            return b0 * self.window + self._block_perm(b0)[positions - b0 * self.window]
        out = np.empty_like(positions)
        for b in range(b0, b1 + 1):
            sel = blocks == b
            out[sel] = b * self.window + self._block_perm(int(b))[positions[sel] - b * self.window]
        return out

    def locate(self, stream_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot in this epoch's shard order, row within that shard) of stream rows."""
        slots = np.searchsorted(self.slot_start, stream_idx, side="right") - 1
        return slots, stream_idx - self.slot_start[slots]

    def sample_ids(self, stream_idx: np.ndarray) -> np.ndarray:
        """Stable global ids (row number in index order): what masking seeds and tests compare."""
        slots, rows = self.locate(stream_idx)
        return self.first_id[self.shard_perm[slots]] + rows

    def slot_of(self, stream_idx: int) -> int:
        return int(np.searchsorted(self.slot_start, stream_idx, side="right") - 1)


def global_order(index: ShardIndex, seed: int, epoch: int, window: int, count: int | None = None) -> np.ndarray:
    """Sample ids of the first ``count`` positions of an epoch (all rows when None)."""
    order = EpochOrder(index, seed, epoch, window)
    n = order.total if count is None else count
    return order.sample_ids(order.stream_index(np.arange(n, dtype=np.int64)))
