"""Builds a BERT pretraining model from resolved config fields (``ModelSpec.bert_config``).

A leaf module: it takes plain values, so it depends on no other part of the project.
``transformers`` is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

from typing import Any


def build_config(fields: dict[str, Any], pad_token_id: int = 0):
    from transformers import BertConfig

    return BertConfig(pad_token_id=pad_token_id, **fields)


def build_model(fields: dict[str, Any], nsp: bool, pad_token_id: int = 0):
    """BertForPreTraining (MLM + NSP heads) when NSP is on, else BertForMaskedLM."""
    from transformers import BertForMaskedLM, BertForPreTraining

    config = build_config(fields, pad_token_id)
    return BertForPreTraining(config) if nsp else BertForMaskedLM(config)
