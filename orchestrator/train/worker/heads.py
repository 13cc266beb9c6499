"""The module DeepSpeed trains: a transformers BERT whose MLM head runs only at masked positions.

For a small BERT the vocabulary projection dominates the cost (hidden x vocab per position,
e.g. 128 x 8000 against ~400k multiply-adds for the whole 2-layer encoder); only ~15% of
positions carry a label, so projecting just those gives the same loss (the mean cross entropy
over labelled positions, as transformers computes it) at a fraction of the cost. The wrapped
model is the unchanged ``BertForPreTraining`` / ``BertForMaskedLM``: its weights are saved under
the ``model.`` prefix, which export strips.

Two ways to pick the positions, with the same loss:

- by the boolean mask ``labels != -100`` (the reference): its shape depends on the data, so on a
  GPU it waits for the device (a host sync per micro-batch);
- by a static-size index computed on the host (``masked_index``) before the copy: the labelled
  positions padded to a fixed capacity with ignored targets, so the device never reports a
  count back and every micro-batch has the same shapes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.model import ATTENTION
from orchestrator.train.worker import unpad as unpad_inputs

PREFIX = "model."
IGNORE = -100
CAPACITY_MULTIPLE = 64  # capacities are rounded up to this, for tensor-core friendly shapes


def mlm_capacity(positions: int, mlm_probability: float) -> int:
    """A static row count for the head of a micro-batch of ``positions`` tokens: the binomial
    mean plus six standard deviations, rounded up, so a batch needs more only vanishingly rarely
    (and then ``masked_index`` grows to fit, never drops a label)."""
    mean = positions * mlm_probability
    bound = mean + 6.0 * math.sqrt(mean * (1.0 - mlm_probability))
    return min(positions, _round_up(math.ceil(bound), CAPACITY_MULTIPLE))


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def masked_index(labels: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions, targets) of the labelled tokens of ``labels`` (micro, seq), padded to
    ``capacity`` rows (position 0, target -100). A micro-batch with more labels than
    ``capacity`` (whole-word masking can do that) gets the next multiple of 64 (at most every
    position) instead."""
    flat = labels.reshape(-1)
    positions = np.flatnonzero(flat != IGNORE)
    size = capacity if positions.size <= capacity else min(flat.size, _round_up(positions.size, CAPACITY_MULTIPLE))
    padded_positions = np.zeros(size, dtype=np.int64)
    padded_targets = np.full(size, IGNORE, dtype=np.int64)
    padded_positions[: positions.size] = positions
    padded_targets[: positions.size] = flat[positions]
    return padded_positions, padded_targets


def device_inputs(micro: dict, device, capacity: int, unpad: bool = False) -> dict:
    """A stream micro-batch (numpy) as the head's inputs on ``device``, labels replaced by the
    static-size index; copied from pinned memory without blocking the host on a GPU. ``unpad``:
    the real tokens packed into one sequence (``unpad.pack``)."""
    positions, targets = masked_index(np.asarray(micro["labels"]), capacity)
    if unpad:
        host = unpad_inputs.pack(micro, positions)
    else:
        host = {k: v for k, v in micro.items() if k != "labels"}
        host["mlm_positions"] = positions
    host["mlm_targets"] = targets
    return _on_device(host, device)


def _on_device(host: dict, device) -> dict:
    """Arrays become tensors on ``device``; plain Python numbers (``max_length_q``) pass as they are."""
    pin = torch.device(device).type == "cuda"
    out = {}
    for key, value in host.items():
        if isinstance(value, int):
            out[key] = value
            continue
        dtype = torch.int32 if key == "cu_seq_lens_q" else torch.long  # the varlen kernel's type
        tensor = torch.as_tensor(np.asarray(value), dtype=dtype)
        out[key] = (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)
    return out


class MaskedPositionsPretraining(torch.nn.Module):
    def __init__(self, model, nsp: bool):
        super().__init__()
        self.model = model
        self.nsp = nsp

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, next_sentence_label=None,
                mlm_positions=None, mlm_targets=None, **packed):
        """``labels`` (the reference) or ``mlm_positions`` + ``mlm_targets`` (``device_inputs``);
        ``packed``: the arguments of a packed micro-batch (``unpad.pack``), without an attention mask."""
        sequence, pooled = self._encode(input_ids, attention_mask, token_type_ids, packed)
        if mlm_positions is not None:
            result = self._mlm_static(sequence, mlm_positions, mlm_targets)
        else:
            result = self._mlm_boolean(sequence, labels)
        with torch.no_grad():
            result["tokens"] = attention_mask.sum() if attention_mask is not None else \
                packed["cu_seq_lens_q"][-1].long()
        if self.nsp and next_sentence_label is not None:
            self._add_nsp(result, pooled, next_sentence_label)
        return result

    def _encode(self, input_ids, attention_mask, token_type_ids, packed: dict):
        """(sequence, pooled): the encoder's output, and the pooled [CLS] of every row."""
        if not packed:
            out = self.model.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out[0], (out[1] if len(out) > 1 else None)
        cls_index = packed.pop("cls_index")
        sequence = self.model.bert(input_ids=input_ids, token_type_ids=token_type_ids, **packed)[0]
        pooler = self.model.bert.pooler
        # The pooler reads position 0 of each row; here the rows' [CLS] tokens are spread along one
        # packed sequence, so it is given them as rows of length 1.
        pooled = pooler(sequence[0].index_select(0, cls_index).unsqueeze(1)) if pooler is not None else None
        return sequence, pooled

    def _mlm_boolean(self, sequence, labels) -> dict:
        selected = labels != IGNORE
        target = labels[selected]
        logits = self.model.cls.predictions(sequence[selected]).float()
        # An empty selection would give NaN; it carries no signal, so it contributes zero loss.
        mlm_loss = F.cross_entropy(logits, target) if target.numel() else logits.sum() * 0.0
        with torch.no_grad():
            correct = (logits.argmax(-1) == target).sum()
        return {"mlm_loss": mlm_loss, "loss": mlm_loss, "mlm_ok": correct, "mlm_n": torch.tensor(target.numel())}

    def _mlm_static(self, sequence, positions, targets) -> dict:
        rows = sequence.reshape(-1, sequence.shape[-1]).index_select(0, positions)
        logits = self.model.cls.predictions(rows).float()
        valid = targets != IGNORE
        count = valid.sum()
        # The sum over labelled rows over their count: the reference's mean, and zero (not NaN)
        # for a batch without labels, with no data-dependent branch.
        total = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
        mlm_loss = total / count.clamp(min=1)
        with torch.no_grad():
            correct = ((logits.argmax(-1) == targets) & valid).sum()
        return {"mlm_loss": mlm_loss, "loss": mlm_loss, "mlm_ok": correct, "mlm_n": count}

    def _add_nsp(self, result: dict, pooled, next_sentence_label) -> None:
        nsp_logits = self.model.cls.seq_relationship(pooled).float()
        nsp_labels = next_sentence_label.view(-1)
        nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
        result["nsp_loss"] = nsp_loss
        result["loss"] = result["mlm_loss"] + nsp_loss
        with torch.no_grad():
            result["nsp_ok"] = (nsp_logits.argmax(-1) == nsp_labels).sum()
            result["nsp_n"] = torch.tensor(nsp_labels.numel())


def attention_for(training) -> str:
    """The model's attention implementation for ``spec.training``: the packed-rows one under
    ``unpad`` (registered with transformers first), else the project's default."""
    if not training.unpad:
        return ATTENTION
    unpad_inputs.register()
    return unpad_inputs.ATTENTION


def compile_encoder(head: MaskedPositionsPretraining, packed: bool = False) -> None:
    """``spec.training.compile``: the transformers encoder (``head.model.bert``) runs through
    ``torch.compile``. ``Module.compile`` compiles the module's call in place instead of wrapping
    it in an ``OptimizedModule``, so parameter names and state_dict keys (checkpoints, export) stay
    the eager model's: a checkpoint of a compiled run loads into an eager one and back. Only the
    encoder: the head's row count can change between micro-batches (an overflowing one grows the
    index), which would recompile a static graph. ``dynamic=False``: every padded micro-batch the
    stream yields is (micro_batch_size, seq_len), so one static graph serves the whole run; a
    ``packed`` one (``spec.training.unpad``) has as many tokens as its rows hold, so its length is
    symbolic."""
    head.model.bert.compile(dynamic=packed)


def unwrap_state_dict(weights: dict) -> dict:
    """Keys of the wrapped transformers model (export loads them into the plain class)."""
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in weights.items()}
