"""``spec.training.unpad``: the encoder computes on real tokens only.

A micro-batch of padded rows (micro, seq) goes to the model as one packed sequence of its real
tokens (1, T): every row keeps its own positions (0, 1, ... from its [CLS]) and attends only to
itself, through the cumulative row lengths (``cu_seq_lens_q``). The dense layers (most of the
FLOPs) then do no work on padding, which is a fifth of a quickstart batch.

Attention runs through transformers' attention interface under the name ``ATTENTION``:

- on a GPU in bf16/fp16, PyTorch's variable-length FlashAttention kernel
  (``torch.nn.attention.varlen.varlen_attn``), which attends within each row of the packed
  sequence without materialising a padded batch;
- anywhere else (a CPU, fp32), the rows are scattered back into a padded batch for SDPA with the
  key-padding mask and gathered again: the same numbers as the padded model, which is what the
  tests compare on a CPU.

The kernel has no attention-probability dropout, so the manifest asks for
``attention_probs_dropout_prob: 0`` with this switch (spec_rules); hidden dropout is unchanged.
Without the packed arguments (a padded call) the function is transformers' SDPA path, so a model
built with this name still runs padded batches (evaluation, export checks).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ATTENTION = "bertctl_varlen"
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def register() -> None:
    """Make ``ATTENTION`` a valid ``attn_implementation`` (idempotent); its mask for padded calls
    is SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, varlen_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-interface signature: (1, heads, T, dim) in, (1, T, heads, dim) out."""
    index = kwargs.get("unpad_index")
    if index is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    cu, longest = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, heads, dim)
    if q.is_cuda and q.dtype in _FLASH_DTYPES and dropout == 0.0:
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling)
    else:
        out = _padded_attention(q, k, v, index, cu.numel() - 1, longest, scaling, dropout)
    return out.unsqueeze(0), None


def _padded_attention(q, k, v, index, rows: int, seq_len: int, scaling, dropout: float):
    """The packed rows scattered into (rows, heads, seq_len, dim), SDPA with the key-padding mask,
    and gathered back: numerically the padded model's attention."""
    heads, dim = q.shape[1], q.shape[2]

    def padded(t):
        slots = t.new_zeros(rows * seq_len, heads, dim).index_copy(0, index, t)
        return slots.view(rows, seq_len, heads, dim).transpose(1, 2)

    real = torch.zeros(rows * seq_len, dtype=torch.bool, device=q.device).index_fill(0, index, True)
    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=real.view(rows, 1, 1, seq_len),
                                         dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).reshape(rows * seq_len, heads, dim).index_select(0, index)


def pack(micro: dict, positions: np.ndarray) -> dict:
    """A stream micro-batch (numpy, padded) as the packed model inputs, on the host.

    ``positions`` are the masked-positions head's flat indices into (micro, seq); they come back
    as indices into the packed tokens (the padded slots of the static index, position 0, stay 0:
    every row starts with a real [CLS])."""
    mask = np.asarray(micro["attention_mask"])
    rows, seq_len = mask.shape
    real = mask.reshape(-1) != 0
    index = np.flatnonzero(real)
    packed_of = np.cumsum(real) - 1  # a padded slot's index among the real tokens
    lengths = real.reshape(rows, seq_len).sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    out = {
        "input_ids": np.asarray(micro["input_ids"]).reshape(-1)[index][None],
        "token_type_ids": np.asarray(micro["token_type_ids"]).reshape(-1)[index][None],
        "position_ids": np.tile(np.arange(seq_len), rows)[index][None],
        "unpad_index": index,
        "cu_seq_lens_q": starts.astype(np.int32),
        "cls_index": starts[:-1],
        "mlm_positions": packed_of[positions],
        "max_length_q": int(seq_len),  # an upper bound of the row lengths, constant for the run
    }
    if "next_sentence_label" in micro:
        out["next_sentence_label"] = np.asarray(micro["next_sentence_label"])
    return out
