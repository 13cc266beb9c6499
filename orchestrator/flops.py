"""Model FLOPs of BERT pretraining and model FLOPs utilisation (MFU) against a device's dense peak.

A leaf module: plain arithmetic on a ``BertConfig``-like mapping (``ModelSpec.bert_config``),
no torch. The count is the *model's* work per real (non-padding) token, the same for every
implementation of it, so MFU compares implementations honestly: computing logits at unlabelled
positions, attending to padding or recomputing activations is extra hardware work, never credit.

Per token, forward + backward (backward = 2 x forward), a multiply-add = 2 FLOPs:

- ``6 * N``: N = the encoder layers' parameters (Q, K, V, output projections, the feed-forward
  pair, biases and LayerNorms); embedding lookups do no matmul and are left out.
- ``12 * L * h * S``: per layer the two sequence-length-dependent matmuls, Q K^T and A V, each
  ``2 * S * h`` FLOPs forward per token (S: the attended sequence length).
- ``6 * f * (h*h + 3h + h*V + V)``: the MLM head (transform, LayerNorm, vocabulary projection)
  over the masked fraction ``f`` of real tokens only, as the loss needs it nowhere else.
- with NSP, ``6 * (h*h + h + 2h + 2) / S``: the pooler and NSP classifier, once per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

TFLOPS = 1e12


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per real token, by part (forward + backward)."""

    encoder: float    # 6 x non-embedding (encoder layer) parameters
    attention: float  # Q K^T and A V, forward + backward
    mlm_head: float   # the masked-positions head, over the masked fraction
    nsp_head: float   # pooler + NSP classifier, per sequence spread over its tokens

    @property
    def total(self) -> float:
        return self.encoder + self.attention + self.mlm_head + self.nsp_head


def encoder_parameters(config: Mapping) -> int:
    """Parameters of the encoder layers (what transformers' ``BertEncoder`` holds)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    attention = 4 * (h * h + h) + 2 * h          # Q, K, V, output (+ biases), LayerNorm
    feed_forward = (h * i + i) + (i * h + h) + 2 * h
    return layers * (attention + feed_forward)


def mlm_head_parameters(config: Mapping) -> int:
    """The MLM head as it runs per masked position: transform, LayerNorm, (tied) decoder + bias."""
    h, vocab = config["hidden_size"], config["vocab_size"]
    return (h * h + h) + 2 * h + (h * vocab + vocab)


def flops_per_token(config: Mapping, seq_len: int, masked_fraction: float, nsp: bool) -> FlopsPerToken:
    """Training FLOPs per real token of a BERT of ``config`` (see the module docstring).

    ``seq_len``: the attended length (the packed sequence length); ``masked_fraction``: labelled
    positions per real token (about 0.15 x the non-special share; measure it from the data).
    """
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    nsp_params = (h * h + h) + (2 * h + 2) if nsp else 0
    return FlopsPerToken(
        encoder=6.0 * encoder_parameters(config),
        attention=12.0 * layers * h * seq_len,
        mlm_head=6.0 * masked_fraction * mlm_head_parameters(config),
        nsp_head=6.0 * nsp_params / seq_len,
    )


# Dense (no structured sparsity) peak FLOP/s per GPU by precision, from NVIDIA's data sheets
# (their "with sparsity" figures halved); docs/training.md ("MFU") names the sources. fp32 is the
# non-tensor-core rate: PyTorch leaves TF32 matmuls off by default. Order matters: the first
# pattern contained in the device name wins (so "H100 PCIe" is tried before "H100").
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # SXM5 ("H100 80GB HBM3")
    ("H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # SXM
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),  # A10, not the A10G
    ("V100-PCIE", {"fp16": 112.0, "fp32": 14.0}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # SXM2
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
)


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of ``device_name`` (as ``torch.cuda.get_device_name`` spells it) at
    ``precision``; None when the device or the precision is not in the table."""
    if device_name.upper().endswith("A10G"):
        return None  # AWS's A10G is rated differently from the A10; no data sheet figure to use
    for pattern, peaks in PEAK_TFLOPS:
        if pattern.upper() in device_name.upper():
            tflops = peaks.get(precision)
            return tflops * TFLOPS if tflops is not None else None
    return None


def mfu(real_tokens_per_s: float, flops_per_real_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the dense peak (None without a peak)."""
    if not peak or peak <= 0:
        return None
    return real_tokens_per_s * flops_per_real_token / peak
