"""Dynamic MLM masking in numpy (no torch in data/).

Every random number is a counter-based hash of (seed, epoch, global sample id, token position),
so a sample's mask is the same whatever the world size, batch composition or resume point -
the invariant exact resume relies on. BERT's recipe: ``mlm_probability`` of the non-special
tokens are selected; of those 80% become [MASK], 10% a random non-special token, 10% unchanged.
Labels are -100 where nothing is predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1, _M2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_POS = _U64(0xD6E8FEB86659FD93)
IGNORE = -100


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective avalanche hash on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _M1
        z = (z ^ (z >> _U64(27))) * _M2
        return z ^ (z >> _U64(31))


def _uniform(h: np.ndarray) -> np.ndarray:
    return (h >> _U64(11)).astype(np.float64) * (1.0 / 2**53)


def sample_keys(seed: int, epoch: int, sample_ids: np.ndarray) -> np.ndarray:
    base = _mix(_mix(np.array([seed], dtype=_U64)) ^ _U64(epoch))
    return _mix(base ^ np.asarray(sample_ids, dtype=_U64))


@dataclass(frozen=True)
class MaskingConfig:
    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]
    mlm_probability: float = 0.15
    whole_word: bool = False
    continuation_ids: tuple[int, ...] = ()   # ids of '##' pieces (whole-word masking only)

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        special = np.zeros(self.vocab_size, dtype=bool)
        special[list(self.special_ids)] = True
        cont = np.zeros(self.vocab_size, dtype=bool)
        cont[list(self.continuation_ids)] = True
        allowed = np.flatnonzero(~special).astype(np.int64)  # random replacements are never special
        return special, cont, allowed


class Masker:
    """Applies the masking recipe to a batch of rows; build once per stream (lookup tables)."""

    def __init__(self, config: MaskingConfig):
        self.config = config
        self._special, self._cont, self._allowed = config.tables()

    def __call__(self, ids: np.ndarray, seed: int, epoch: int, sample_ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``ids`` [n, L] int64 (padded with [PAD]); returns (masked input_ids, labels)."""
        n, length = ids.shape
        keys = sample_keys(seed, epoch, sample_ids)[:, None]
        with np.errstate(over="ignore"):
            pos = (np.arange(1, length + 1, dtype=_U64) * _POS)[None, :]
            h1 = _mix(keys ^ pos)
        h2 = _mix(h1)
        special = self._special[ids]
        u_sel = _uniform(h1)
        if self.config.whole_word:
            u_sel = self._word_draws(ids, special, u_sel)
        selected = (u_sel < self.config.mlm_probability) & ~special
        u_kind = _uniform(h2)
        to_mask = selected & (u_kind < 0.8)
        to_random = selected & (u_kind >= 0.8) & (u_kind < 0.9)
        random_ids = self._allowed[((h2 >> _U64(16)) % _U64(len(self._allowed))).astype(np.int64)]
        labels = np.where(selected, ids, IGNORE)
        out = np.where(to_mask, self.config.mask_id, ids)
        out = np.where(to_random, random_ids, out)
        return out, labels

    def _word_draws(self, ids: np.ndarray, special: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Give every '##' continuation the draw of the first piece of its word."""
        cont = self._cont[ids] & ~special
        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        word_start = np.maximum.accumulate(np.where(cont, 0, positions), axis=1)
        return np.take_along_axis(u, word_start, axis=1)
