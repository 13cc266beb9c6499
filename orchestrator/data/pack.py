"""Packing tokenized documents into fixed-length training rows (numpy; rows are token ranges).

A document is its token ids plus sorted piece *bounds*: sentence ends, with sentences longer than a
row cut into pieces first, so nothing is ever truncated.
NSP on: ``[CLS] A [SEP] B [SEP]`` where A and B are runs of whole pieces (a single piece is split
between them). With probability 1/2 (or always, when nothing follows A) B is a run of another
document of the same unit (label 1); the real continuation is then put back and starts the next
pair, so every token of the corpus lands in exactly one A or real B.
NSP off: ``[CLS] tokens [SEP]`` packed with whole pieces up to seq_len.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IS_NEXT, RANDOM_NEXT = 0, 1


@dataclass
class Doc:
    ids: np.ndarray      # token ids
    bounds: np.ndarray   # sorted piece ends (the last is len(ids))

    def starts(self) -> np.ndarray:
        return np.concatenate([[0], self.bounds[:-1]])


def make_doc(ids: np.ndarray, sentence_starts: np.ndarray, limit: int) -> Doc:
    """Pieces = sentences, each cut into runs of at most ``limit`` tokens."""
    n = len(ids)
    starts = np.concatenate([[0], sentence_starts]).astype(np.int64)
    ends = np.concatenate([sentence_starts, [n]]).astype(np.int64)
    cuts = [np.arange(s + limit, e, limit) for s, e in zip(starts, ends) if e - s > limit]
    bounds = np.unique(np.concatenate([ends, *cuts]) if cuts else ends)
    return Doc(ids, bounds[bounds > 0])


# A row: (doc, a_start, a_end, b_doc, b_start, b_end, label); B is empty when b_end == b_start.
Row = tuple[int, int, int, int, int, int, int]


def _chunk_end(bounds: np.ndarray, k: int, cur: int, limit: int) -> int:
    """Index of the last bound of the longest run of pieces from ``cur`` that fits in ``limit``."""
    last = int(np.searchsorted(bounds, cur + limit, side="right")) - 1
    return max(last, k)


def pack_plain(docs: list[Doc], seq_len: int) -> list[Row]:
    rows: list[Row] = []
    limit = seq_len - 2
    for d, doc in enumerate(docs):
        cur, k = 0, 0
        while cur < len(doc.ids):
            end = int(doc.bounds[_chunk_end(doc.bounds, k, cur, limit)])
            rows.append((d, cur, end, d, end, end, IS_NEXT))
            cur = end
            k = int(np.searchsorted(doc.bounds, cur, side="right"))
    return rows


def pack_nsp(docs: list[Doc], seq_len: int, rng: np.random.Generator) -> list[Row]:
    rows: list[Row] = []
    limit = seq_len - 3
    starts = [doc.starts() for doc in docs]
    for d, doc in enumerate(docs):
        cur, k = 0, 0
        while cur < len(doc.ids):
            last = _chunk_end(doc.bounds, k, cur, limit)
            end = int(doc.bounds[last])
            a_end = _split(doc.bounds, k, last, cur, end, rng)
            if len(docs) > 1 and (a_end == end or rng.random() < 0.5):
                j = int(rng.integers(0, len(docs) - 1))
                j += j >= d  # any document but this one
                s = int(starts[j][int(rng.integers(0, len(starts[j])))])
                room = limit - (a_end - cur)
                rows.append((d, cur, a_end, j, s, min(s + room, len(docs[j].ids)), RANDOM_NEXT))
                cur = a_end  # the real continuation is put back
            else:
                rows.append((d, cur, a_end, d, a_end, end, IS_NEXT))
                cur = end
            k = int(np.searchsorted(doc.bounds, cur, side="right"))
    return rows


def _split(bounds: np.ndarray, k: int, last: int, cur: int, end: int, rng: np.random.Generator) -> int:
    """End of A: after a random number of whole pieces, or inside a single piece."""
    if last > k:
        return int(bounds[k + int(rng.integers(0, last - k))])
    if end - cur >= 2:
        return cur + int(rng.integers(1, end - cur))
    return end


def to_arrays(docs: list[Doc], rows: list[Row], seq_len: int, cls: int, sep: int, pad: int,
              dtype) -> dict[str, np.ndarray]:
    n = len(rows)
    ids = np.full((n, seq_len), pad, dtype=dtype)
    length = np.empty(n, dtype=np.int16)
    a_end = np.empty(n, dtype=np.int16)
    labels = np.empty(n, dtype=np.int8)
    for i, (d, a0, a1, bd, b0, b1, label) in enumerate(rows):
        la, lb = a1 - a0, b1 - b0
        ids[i, 0] = cls
        ids[i, 1:1 + la] = docs[d].ids[a0:a1]
        ids[i, 1 + la] = sep
        end = 2 + la
        if lb:
            ids[i, end:end + lb] = docs[bd].ids[b0:b1]
            ids[i, end + lb] = sep
            end += lb + 1
        length[i], a_end[i], labels[i] = end, 2 + la, label
    return {"input_ids": ids, "length": length, "a_end": a_end, "next_sentence_label": labels}
