"""The MFU meter: FLOPs per token against hand-computed bert-base values and transformers' own
parameter counts, the dense-peak table's name matching, and MFU itself."""

from __future__ import annotations

import pytest
import torch

from orchestrator.flops import (
    TFLOPS, encoder_parameters, flops_per_token, mfu, mlm_head_parameters, peak_flops,
)

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "vocab_size": 30522, "max_position_embeddings": 512}


def test_bert_base_counts_by_hand():
    # One layer: Q, K, V, O 4 x (768*768 + 768) = 2,362,368; feed-forward 768*3072 + 3072 + 3072*768 + 768
    # = 4,722,432; two LayerNorms 2 x 1,536 = 3,072 -> 7,087,872; x 12 layers = 85,054,464 ("~85M").
    assert encoder_parameters(BERT_BASE) == 85_054_464
    # Transform 768*768 + 768, LayerNorm 1,536, decoder 768*30522 + 30522 = 24,063,546.
    assert mlm_head_parameters(BERT_BASE) == 24_063_546
    f = flops_per_token(BERT_BASE, seq_len=128, masked_fraction=0.15, nsp=True)
    assert f.encoder == 6 * 85_054_464 == 510_326_784
    assert f.attention == 12 * 12 * 768 * 128 == 14_155_776          # Q K^T and A V, fwd + bwd
    assert f.mlm_head == pytest.approx(6 * 0.15 * 24_063_546)       # 21,657,191.4
    assert f.nsp_head == pytest.approx(6 * (590_592 + 1_538) / 128)  # pooler + classifier per sequence
    assert f.total == pytest.approx(510_326_784 + 14_155_776 + 21_657_191.4 + 27_756.09375)


def test_attention_grows_with_sequence_length_and_heads_with_the_masked_fraction():
    short = flops_per_token(BERT_BASE, 128, 0.15, nsp=False)
    long = flops_per_token(BERT_BASE, 512, 0.30, nsp=False)
    assert long.attention == 4 * short.attention and long.encoder == short.encoder
    assert long.mlm_head == pytest.approx(2 * short.mlm_head)
    assert short.nsp_head == 0.0


def test_parameter_counts_match_transformers_bert():
    """The formulas count what transformers' BERT holds (built on the meta device: no memory)."""
    from transformers import BertConfig, BertForPreTraining

    for fields in (BERT_BASE, {**BERT_BASE, "hidden_size": 1024, "num_hidden_layers": 24,
                               "num_attention_heads": 16, "intermediate_size": 4096}):
        with torch.device("meta"):
            model = BertForPreTraining(BertConfig(**fields))
        encoder = sum(p.numel() for p in model.bert.encoder.parameters())
        predictions = model.cls.predictions
        head = sum(p.numel() for p in predictions.transform.parameters()) + predictions.decoder.weight.numel() \
            + predictions.bias.numel()
        assert encoder == encoder_parameters(fields)
        assert head == mlm_head_parameters(fields)


@pytest.mark.parametrize("name,precision,tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.5),  # SXM5
    ("NVIDIA H100 PCIe", "bf16", 756.5),
    ("NVIDIA H100 NVL", "bf16", 835.5),
    ("NVIDIA H200", "bf16", 989.5),
    ("NVIDIA H200 NVL", "fp16", 835.5),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA A100 80GB PCIe", "fp32", 19.5),
    ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40S", "bf16", 362.05),
    ("NVIDIA A10", "bf16", 125.0),
    ("Tesla V100-SXM2-16GB", "fp16", 125.0),
    ("Tesla V100-PCIE-32GB", "fp16", 112.0),
    ("Tesla T4", "fp32", 8.1),
])
def test_dense_peaks_by_device_name(name, precision, tflops):
    assert peak_flops(name, precision) == pytest.approx(tflops * TFLOPS)


@pytest.mark.parametrize("name,precision", [
    ("NVIDIA A10G", "bf16"),          # not the A10's figures
    ("Tesla V100-SXM2-16GB", "bf16"),  # no bf16 tensor cores
    ("cpu", "fp32"),
    ("NVIDIA H100 80GB HBM3", "int8"),
])
def test_unknown_device_or_precision_has_no_peak(name, precision):
    assert peak_flops(name, precision) is None
    assert mfu(1e5, 5e8, peak_flops(name, precision)) is None


def test_mfu_is_achieved_model_flops_over_peak():
    per_token = flops_per_token(BERT_BASE, 128, 0.15, nsp=True).total  # 546,167,507.5
    # 235k real tokens/s of bert-base on an H100 SXM: 1.2835e14 FLOP/s of 9.895e14 = 12.97%.
    value = mfu(235_000, per_token, peak_flops("NVIDIA H100 80GB HBM3", "bf16"))
    assert value == pytest.approx(235_000 * 546_167_507.5 / 989.5e12)
    assert 0.129 < value < 0.130
