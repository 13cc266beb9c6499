"""The module DeepSpeed trains: a transformers BERT whose MLM head runs only at masked positions.

For a small BERT the vocabulary projection dominates the cost (hidden x vocab per position,
e.g. 128 x 8000 against ~400k multiply-adds for the whole 2-layer encoder); only ~15% of
positions carry a label, so projecting just those gives the same loss (the mean cross entropy
over labelled positions, as transformers computes it) at a fraction of the cost. The wrapped
model is the unchanged ``BertForPreTraining`` / ``BertForMaskedLM``: its weights are saved under
the ``model.`` prefix, which export strips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREFIX = "model."


class MaskedPositionsPretraining(torch.nn.Module):
    def __init__(self, model, nsp: bool):
        super().__init__()
        self.model = model
        self.nsp = nsp

    def forward(self, input_ids, attention_mask, token_type_ids, labels, next_sentence_label=None):
        out = self.model.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        sequence, pooled = out[0], (out[1] if len(out) > 1 else None)
        selected = labels != -100
        target = labels[selected]
        logits = self.model.cls.predictions(sequence[selected]).float()
        # An empty selection would give NaN; it carries no signal, so it contributes zero loss.
        mlm_loss = F.cross_entropy(logits, target) if target.numel() else logits.sum() * 0.0
        result = {"mlm_loss": mlm_loss, "loss": mlm_loss}
        with torch.no_grad():
            result["mlm_ok"] = (logits.argmax(-1) == target).sum()
            result["mlm_n"] = torch.tensor(target.numel())
            result["tokens"] = attention_mask.sum()
        if self.nsp and next_sentence_label is not None:
            nsp_logits = self.model.cls.seq_relationship(pooled).float()
            nsp_labels = next_sentence_label.view(-1)
            nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
            result["nsp_loss"] = nsp_loss
            result["loss"] = mlm_loss + nsp_loss
            with torch.no_grad():
                result["nsp_ok"] = (nsp_logits.argmax(-1) == nsp_labels).sum()
                result["nsp_n"] = torch.tensor(nsp_labels.numel())
        return result


def unwrap_state_dict(weights: dict) -> dict:
    """Keys of the wrapped transformers model (export loads them into the plain class)."""
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in weights.items()}
