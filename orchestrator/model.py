"""Builds a BERT pretraining model from resolved config fields (``ModelSpec.bert_config``).

A leaf module: it takes plain values, so it depends on no other part of the project.
``transformers`` is imported lazily so that importing this module stays cheap.

Attention runs through PyTorch's ``scaled_dot_product_attention`` (transformers' "sdpa"
implementation), which picks FlashAttention / memory-efficient kernels on a GPU. It is named here
rather than left to the library's default, so a transformers upgrade cannot switch a running job
to another kernel between a checkpoint and its resume. "eager" is the reference implementation
(tests compare the two).
"""

from __future__ import annotations

from typing import Any

ATTENTION = "sdpa"


def build_config(fields: dict[str, Any], pad_token_id: int = 0, attention: str = ATTENTION):
    from transformers import BertConfig

    # transformers' switch; an unknown name fails when the model is built, listing the valid ones.
    return BertConfig(pad_token_id=pad_token_id, attn_implementation=attention, **fields)


def build_model(fields: dict[str, Any], nsp: bool, pad_token_id: int = 0, attention: str = ATTENTION):
    """BertForPreTraining (MLM + NSP heads) when NSP is on, else BertForMaskedLM."""
    from transformers import BertForMaskedLM, BertForPreTraining

    config = build_config(fields, pad_token_id, attention)
    return BertForPreTraining(config) if nsp else BertForMaskedLM(config)
