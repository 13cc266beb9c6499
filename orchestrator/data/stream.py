"""The training stream: each rank's slice of every global batch, masked, resumable exactly.

Global batch g is positions [g*B, (g+1)*B) of the epoch order (orchestrator.data.order); rank r
takes [r*B/W, (r+1)*B/W) of it, split into grad_accum = B/(micro*W) micro-batches. The tail of an
epoch smaller than one global batch is dropped (the same rows on every world size). Every rank
reads every shard (the window shuffle scatters a rank's rows over whole shards) but decodes and
masks only its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from orchestrator.data.index import ShardIndex
from orchestrator.data.loader import ShardLoader
from orchestrator.data.masking import Masker, MaskingConfig
from orchestrator.data.order import EpochOrder
from orchestrator.data.vocab import continuation_ids
from orchestrator.errors import DataError, PermanentError
from orchestrator.spec_rules import grad_accum_steps
from orchestrator.storage import storage_for


@dataclass(frozen=True)
class Cursor:
    """Position in the global sample order (what a checkpoint saves)."""

    epoch: int = 0
    sample: int = 0      # global samples consumed in this epoch (a multiple of global_batch_size)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "sample": self.sample}

    @classmethod
    def from_dict(cls, d) -> "Cursor":
        try:
            return cls(epoch=int(d["epoch"]), sample=int(d["sample"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"invalid data cursor {d!r}; expected {{'epoch': int, 'sample': int}}") from None


@dataclass
class StepBatch:
    micro_batches: list[dict[str, np.ndarray]]
    cursor: Cursor            # the position AFTER this global batch
    sample_ids: np.ndarray    # global sample ids this rank consumed in this step, in order


class BatchStream:
    def __init__(self, shards_uri: str, *, global_batch_size: int, micro_batch_size: int, rank: int,
                 world_size: int, seed: int, mlm_probability: float = 0.15, whole_word_masking: bool = False,
                 shuffle_window: int = 10_000, prefetch_bytes: int = 256 * 2**20, cursor: Cursor = Cursor(),
                 verify: str = "once") -> None:
        if not 0 <= rank < world_size:
            raise PermanentError(f"rank {rank} is outside world_size {world_size}")
        self.grad_accum = grad_accum_steps(global_batch_size, micro_batch_size, world_size)
        self.index = ShardIndex.load(shards_uri)
        self.B, self.micro, self.rank, self.world = global_batch_size, micro_batch_size, rank, world_size
        self.seed, self.window, self.budget, self.verify = seed, max(1, shuffle_window), prefetch_bytes, verify
        self.batches_per_epoch = self.index.total_rows // global_batch_size
        if self.batches_per_epoch == 0:
            raise DataError(f"{shards_uri}: {self.index.total_rows} rows is less than one global batch "
                            f"({global_batch_size}); prepare more data or lower the global batch size")
        self.cursor = self._normalize(cursor)
        self.masker = Masker(self._masking_config(mlm_probability, whole_word_masking))
        self._orders: dict[int, EpochOrder] = {}
        self._loader: ShardLoader | None = None

    def _normalize(self, c: Cursor) -> Cursor:
        if c.sample % self.B or c.sample < 0 or c.epoch < 0:
            raise DataError(f"cursor {c} is not at a global batch boundary of {self.B}; it belongs to a run "
                            "with another global_batch_size")
        return Cursor(c.epoch + 1, 0) if c.sample >= self.batches_per_epoch * self.B else c

    def _masking_config(self, p: float, wwm: bool) -> MaskingConfig:
        sp = self.index.special_tokens
        cont: list[int] = []
        if wwm:
            uri = self.index.tokenizer_uri("vocab")
            lines = storage_for(uri).read_bytes(uri).decode().splitlines()
            cont = continuation_ids({t: i for i, t in enumerate(lines)})
        return MaskingConfig(vocab_size=self.index.vocab_size, mask_id=sp["[MASK]"], special_ids=tuple(sp.values()),
                             mlm_probability=p, whole_word=wwm, continuation_ids=tuple(cont))

    def order(self, epoch: int) -> EpochOrder:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = EpochOrder(self.index, self.seed, epoch, self.window)
        return self._orders[epoch]

    def __iter__(self) -> Iterator[StepBatch]:
        start = self.cursor
        first_slot = self.order(start.epoch).slot_of((start.sample // self.window) * self.window)
        self._loader = ShardLoader(self.index, lambda e: EpochOrder(self.index, self.seed, e, self.window).shard_perm,
                                   start.epoch, first_slot, self.budget, self.verify)
        buffer = _SlotBuffer(self._loader, start.epoch)
        epoch, g0 = start.epoch, start.sample // self.B
        while True:
            order = self.order(epoch)
            buffer.new_epoch(epoch)
            for g in range(g0, self.batches_per_epoch):
                yield self._step(order, buffer, g)
            epoch, g0 = epoch + 1, 0

    def _step(self, order: EpochOrder, buffer: "_SlotBuffer", g: int) -> StepBatch:
        local = self.B // self.world
        positions = np.arange(g * self.B + self.rank * local, g * self.B + (self.rank + 1) * local, dtype=np.int64)
        buffer.release_before(order, (positions[0] // self.window) * self.window)
        stream_idx = order.stream_index(positions)
        slots, rows = order.locate(stream_idx)
        raw = buffer.gather(slots, rows)
        sample_ids = order.sample_ids(stream_idx)
        batch = self._features(raw, order.epoch, sample_ids)
        micro = [{k: v[i * self.micro:(i + 1) * self.micro] for k, v in batch.items()} for i in range(self.grad_accum)]
        self.cursor = Cursor(order.epoch, (g + 1) * self.B)
        return StepBatch(micro_batches=micro, cursor=self.cursor, sample_ids=sample_ids)

    def _features(self, raw: dict[str, np.ndarray], epoch: int, sample_ids: np.ndarray) -> dict[str, np.ndarray]:
        return build_features(raw, self.masker, self.seed, epoch, sample_ids, self.index.nsp)

    @property
    def peak_prefetch_bytes(self) -> int:
        """The most shard bytes read ahead at once since iteration began (bounded by ``prefetch_bytes``
        plus the shards one shuffle window spans); 0 before iterating or after ``close``."""
        return self._loader.peak_held if self._loader is not None else 0

    def close(self) -> None:
        if self._loader is not None:
            self._loader.close()
            self._loader = None

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_features(raw: dict[str, np.ndarray], masker: Masker, seed: int, epoch: int, sample_ids: np.ndarray,
                   nsp: bool) -> dict[str, np.ndarray]:
    """Model inputs from stored rows: masked ids, labels, attention mask, token types (+ NSP label)."""
    ids = raw["input_ids"].astype(np.int64)
    pos = np.arange(ids.shape[1])[None, :]
    attention = pos < raw["length"][:, None]
    input_ids, labels = masker(ids, seed, epoch, sample_ids)
    out = {"input_ids": input_ids, "attention_mask": attention.astype(np.int64),
           "token_type_ids": ((pos >= raw["a_end"][:, None]) & attention).astype(np.int64), "labels": labels}
    if nsp:
        out["next_sentence_label"] = raw["next_sentence_label"].astype(np.int64)
    return out


class _SlotBuffer:
    """The decoded shards of the current epoch that the current window can still need."""

    def __init__(self, loader: ShardLoader, epoch: int):
        self.loader, self.epoch, self.slots = loader, epoch, {}

    def new_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            for _, size in self.slots.values():
                self.loader.release(size)
            self.slots, self.epoch = {}, epoch

    def release_before(self, order: EpochOrder, stream_start: int) -> None:
        for slot in [s for s in self.slots if order.slot_start[s + 1] <= stream_start]:
            self.loader.release(self.slots.pop(slot)[1])

    def _ensure(self, slot: int) -> None:
        while slot not in self.slots:
            epoch, s, arrays, size = self.loader.get()
            if epoch < self.epoch:  # the dropped tail of an earlier epoch
                self.loader.release(size)
                continue
            if epoch > self.epoch:
                self.loader.release(size)
                raise RuntimeError(f"shard loader out of step: got epoch {epoch}, expected {self.epoch}")
            self.slots[s] = (arrays, size)

    def gather(self, slots: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        lo, hi = int(slots.min()), int(slots.max())
        for s in range(lo, hi + 1):
            self._ensure(s)
        if lo == hi:  # the common case: the whole slice comes from one shard
            return {name: arr[rows] for name, arr in self.slots[lo][0].items()}
        first = self.slots[lo][0]
        out = {name: np.empty((len(rows),) + arr.shape[1:], dtype=arr.dtype) for name, arr in first.items()}
        for s in range(lo, hi + 1):
            where = np.flatnonzero(slots == s)
            if len(where):
                for name, arr in self.slots[s][0].items():
                    out[name][where] = arr[rows[where]]
        return out
