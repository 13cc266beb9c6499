"""``spec.training.unpad``: a packed micro-batch trains exactly as its padded original.

On the CPU in fp32 the packed path's losses, counts and updates over several AdamW steps equal the
padded fast path's within 1e-5 for the same batches (with and without NSP); the packing itself
keeps every real token, restarts positions per row and points the masked-positions index at the
same tokens; a model built for packed batches still runs padded ones. (The manifest's refusal of
the switch while attention dropout is on is in tests/test_spec.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.model import build_model
from orchestrator.train.worker import unpad
from orchestrator.train.worker.heads import IGNORE, masked_index, mlm_capacity
from tests.train_units.test_fast_path import BATCHES, FIELDS, MICRO, SEQ, assert_same, make_batch, train


@pytest.fixture(scope="module", autouse=True)
def registered():
    unpad.register()


@pytest.mark.parametrize("nsp", [True, False])
def test_packed_training_equals_padded_training(nsp):
    # Dropout off: its draws follow the tensor's shape, which packing changes by design.
    reference = train("sdpa", static_index=True, dropout=0.0, nsp=nsp)
    packed = train(unpad.ATTENTION, static_index=True, dropout=0.0, unpad=True, nsp=nsp)
    assert_same(packed, reference)
    assert ("nsp_loss" in packed[0]) is nsp
    assert packed[0]["tokens"] < MICRO * SEQ  # the batches do carry padding


def test_pack_keeps_every_real_token_and_the_masked_targets():
    batch = make_batch(5)
    mask = batch["attention_mask"]
    positions, targets = masked_index(batch["labels"], mlm_capacity(MICRO * SEQ, 0.15))
    packed = unpad.pack(batch, positions)
    lengths = mask.sum(axis=1)
    assert packed["input_ids"].shape == (1, lengths.sum())
    assert packed["input_ids"][0].tolist() == [t for row, n in zip(batch["input_ids"], lengths) for t in row[:n]]
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert packed["cu_seq_lens_q"].tolist() == [0, *np.cumsum(lengths).tolist()]
    assert packed["cls_index"].tolist() == packed["cu_seq_lens_q"][:-1].tolist()
    labelled = targets != IGNORE
    assert labelled.sum() > 0
    padded_tokens = batch["input_ids"].reshape(-1)[positions[labelled]]
    assert (packed["input_ids"][0][packed["mlm_positions"][labelled]] == padded_tokens).all()


def test_a_packed_model_still_runs_padded_batches():
    batch = {k: torch.as_tensor(v) for k, v in make_batch(6).items()}
    outputs = []
    for attention in ("sdpa", unpad.ATTENTION):
        torch.manual_seed(0)
        model = build_model({**FIELDS, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}, nsp=True,
                            attention=attention).eval()
        outputs.append(model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  token_type_ids=batch["token_type_ids"])[0])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
    assert len(BATCHES) == 4  # the exactness test above ran over every branch of the shared batches

