"""Masking statistics and invariants over a real prepared corpus (>= 100k tokens)."""

from __future__ import annotations

import numpy as np

from orchestrator.data.stream import BatchStream


def one_epoch(shards: str, **kw) -> list:
    stream = BatchStream(shards, global_batch_size=64, micro_batch_size=16, rank=0, world_size=1, seed=7, **kw)
    try:
        out = []
        for step in stream:
            out.append(step)
            if step.cursor.sample == stream.batches_per_epoch * 64:
                return out
    finally:
        stream.close()


def stack(steps, key):
    return np.concatenate([m[key] for s in steps for m in s.micro_batches])


def test_masking_statistics_over_100k_tokens(stdlib_shards):
    steps = one_epoch(stdlib_shards)
    stream = BatchStream(stdlib_shards, global_batch_size=64, micro_batch_size=16, rank=0, world_size=1, seed=7)
    sp = stream.index.special_tokens
    ids, labels, attn = stack(steps, "input_ids"), stack(steps, "labels"), stack(steps, "attention_mask")
    special = np.isin(np.where(labels >= 0, labels, ids), list(sp.values()))
    candidates = (attn == 1) & ~np.isin(np.where(labels >= 0, labels, ids), list(sp.values()))
    selected = labels != -100
    assert candidates.sum() >= 100_000
    assert not (selected & special).any()                  # no special token is ever a target
    assert abs(selected.sum() / candidates.sum() - 0.15) < 0.005
    masked = selected & (ids == sp["[MASK]"])
    kept = selected & (ids == labels)
    randomized = selected & ~masked & ~kept
    n = selected.sum()
    assert abs(masked.sum() / n - 0.80) < 0.01
    # a random replacement may draw the original token (1/vocab), so "kept" is slightly above 10%
    assert abs(kept.sum() / n - 0.10) < 0.01 and abs(randomized.sum() / n - 0.10) < 0.01
    assert not np.isin(ids[randomized], list(sp.values())).any()
    assert (ids[~selected] == np.where(labels >= 0, labels, ids)[~selected]).all()


def test_masks_do_not_depend_on_world_size_or_batching(stdlib_shards):
    def masks(world, rank, micro):
        s = BatchStream(stdlib_shards, global_batch_size=24, micro_batch_size=micro, rank=rank, world_size=world,
                        seed=3, shuffle_window=500)
        step = next(iter(s))
        s.close()
        return dict(zip(step.sample_ids.tolist(), stack([step], "input_ids")))
    full = masks(1, 0, 4)
    for world, micro in ((2, 3), (3, 2), (4, 6)):
        for rank in range(world):
            for sid, row in masks(world, rank, micro).items():
                assert (full[sid] == row).all()


def test_whole_word_masking_masks_all_pieces_of_a_word(stdlib_shards):
    steps = one_epoch(stdlib_shards, whole_word_masking=True)
    stream = BatchStream(stdlib_shards, global_batch_size=64, micro_batch_size=16, rank=0, world_size=1, seed=7)
    lines = open(stream.index.tokenizer_uri("vocab")).read().splitlines()
    is_cont = np.array([t.startswith("##") for t in lines])
    ids, labels = stack(steps, "input_ids"), stack(steps, "labels")
    original = np.where(labels >= 0, labels, ids)
    selected = labels != -100
    specials = np.isin(original, list(stream.index.special_tokens.values()))
    # a '##' piece right after [CLS]/[SEP] (a sentence cut mid-word) starts its own word
    cont = is_cont[original] & ~np.roll(specials, 1, axis=1)
    assert cont.sum() > 5000
    # every continuation piece is selected exactly when the piece before it is
    prev_selected = np.roll(selected, 1, axis=1)
    assert (selected[cont] == prev_selected[cont]).all()
    whole_words = selected & cont
    assert whole_words.sum() > 500
    assert abs(selected.sum() / (stack(steps, "attention_mask") == 1).sum() - 0.15) < 0.03
