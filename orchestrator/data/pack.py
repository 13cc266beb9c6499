"""Packing tokenized documents into fixed-length training rows.

NSP on: ``[CLS] A [SEP] B [SEP]`` where A and B are runs of whole sentences (a single long
sentence is split between them). With probability 1/2 (or always, when nothing follows A) B is
taken from another document of the same unit (label 1); the real continuation is then put back
and starts the next pair, so every token of the corpus lands in exactly one A or real B.
NSP off: ``[CLS] tokens [SEP]`` packed with whole sentences up to seq_len. Nothing is truncated:
sentences longer than a row are cut into pieces first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

IS_NEXT, RANDOM_NEXT = 0, 1


@dataclass
class Rows:
    ids: list[list[int]]
    a_end: list[int]
    labels: list[int]

    def arrays(self, seq_len: int, pad_id: int, dtype) -> dict[str, np.ndarray]:
        n = len(self.ids)
        out = np.full((n, seq_len), pad_id, dtype=dtype)
        lengths = np.fromiter((len(r) for r in self.ids), dtype=np.int16, count=n)
        if n:
            flat = np.fromiter((t for r in self.ids for t in r), dtype=dtype, count=int(lengths.sum()))
            out[np.arange(seq_len)[None, :] < lengths[:, None]] = flat
        return {"input_ids": out, "length": lengths, "a_end": np.asarray(self.a_end, dtype=np.int16),
                "next_sentence_label": np.asarray(self.labels, dtype=np.int8)}


def _pieces(sentences: list[list[int]], limit: int) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sentences:
        out += [s[i:i + limit] for i in range(0, len(s), limit)]
    return [p for p in out if p]


def _take_chunk(queue: deque, limit: int) -> list[list[int]]:
    chunk, total = [queue.popleft()], 0
    total = len(chunk[0])
    while queue and total + len(queue[0]) <= limit:
        total += len(queue[0])
        chunk.append(queue.popleft())
    return chunk


def pack_plain(docs: list[list[list[int]]], seq_len: int, cls: int, sep: int) -> Rows:
    rows = Rows([], [], [])
    for sentences in docs:
        queue = deque(_pieces(sentences, seq_len - 2))
        while queue:
            body = [t for s in _take_chunk(queue, seq_len - 2) for t in s]
            rows.ids.append([cls, *body, sep])
            rows.a_end.append(len(body) + 2)
            rows.labels.append(IS_NEXT)
    return rows


def pack_nsp(docs: list[list[list[int]]], seq_len: int, cls: int, sep: int, rng: np.random.Generator) -> Rows:
    limit = seq_len - 3
    segs = [_pieces(d, limit) for d in docs]
    flats = [[t for s in d for t in s] for d in segs]
    starts = [np.cumsum([0] + [len(s) for s in d[:-1]]).tolist() for d in segs]
    rows = Rows([], [], [])
    for d, pieces in enumerate(segs):
        queue = deque(pieces)
        while queue:
            a, rest = _split(_take_chunk(queue, limit), rng)
            others = len(docs) > 1
            if others and (not rest or rng.random() < 0.5):
                b, label = _random_segment(d, flats, starts, limit - len(a), rng), RANDOM_NEXT
                queue.extendleft(reversed(rest))
            else:
                b, label = [t for s in rest for t in s], IS_NEXT
            rows.ids.append([cls, *a, sep, *b, sep] if b else [cls, *a, sep])
            rows.a_end.append(len(a) + 2)
            rows.labels.append(label)
    return rows


def _split(chunk: list[list[int]], rng: np.random.Generator) -> tuple[list[int], list[list[int]]]:
    """A = the first sentences of the chunk (or the head of a single long one); the rest may be B."""
    if len(chunk) >= 2:
        k = int(rng.integers(1, len(chunk)))
        return [t for s in chunk[:k] for t in s], chunk[k:]
    only = chunk[0]
    if len(only) >= 2:
        k = int(rng.integers(1, len(only)))
        return only[:k], [only[k:]]
    return only, []


def _random_segment(d: int, flats: list[list[int]], starts: list[list[int]], room: int,
                    rng: np.random.Generator) -> list[int]:
    j = int(rng.integers(0, len(flats) - 1))
    j += j >= d  # any document but this one
    if not flats[j]:
        return []
    start = starts[j][int(rng.integers(0, len(starts[j])))]
    return flats[j][start:start + room]
