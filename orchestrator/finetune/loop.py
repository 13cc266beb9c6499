"""The fine-tuning loop: AdamW, transformers' linear schedule with warm-up, a rich progress bar.

A plain torch loop (no Trainer, no accelerate): a task head, one device, a few thousand steps at
most. Batches are padded per batch by transformers' data collators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from orchestrator.finetune.source import FinetuneInputError

_NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")


@dataclass(frozen=True)
class Hyper:
    epochs: float
    lr: float
    batch_size: int
    max_length: int
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0


def pick_device(name: str | None):
    """The GPU where there is one, else the CPU (``name`` forces one: cpu, cuda, cuda:1)."""
    import torch

    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise FinetuneInputError(f"--device {name}: no CUDA device is visible here; use --device cpu")
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _optimizer(model, hp: Hyper):
    import torch

    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(_NO_DECAY)]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(_NO_DECAY)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=hp.lr)


def _bar(show: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not show)


def train(model, features: list[dict], collator, hp: Hyper, device, show_progress: bool, title: str) -> tuple[int, int]:
    """Train in place; returns (optimizer steps, training examples seen)."""
    import torch
    from transformers import get_scheduler

    torch.manual_seed(hp.seed)
    loader = torch.utils.data.DataLoader(features, batch_size=hp.batch_size, shuffle=True, collate_fn=collator,
                                         generator=torch.Generator().manual_seed(hp.seed))
    steps = hp.max_steps or max(1, math.ceil(hp.epochs * len(loader)))
    optimizer = _optimizer(model, hp)
    schedule = get_scheduler("linear", optimizer, num_warmup_steps=int(hp.warmup_ratio * steps),
                             num_training_steps=steps)
    model.to(device).train()
    done, seen = 0, 0
    with _bar(show_progress) as bar:
        task = bar.add_task(title, total=steps, loss="-")
        while done < steps:
            for batch in loader:
                loss = _step(model, batch, optimizer, schedule, device)
                done, seen = done + 1, seen + len(batch["input_ids"])
                bar.update(task, advance=1, loss=f"{loss.item():.4f}")
                if done >= steps:
                    break
    return done, seen


def _step(model, batch, optimizer, schedule, device):
    import torch

    loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
    if not torch.isfinite(loss):
        raise FinetuneInputError(f"the training loss became {loss.item()}; lower --lr (now "
                                 f"{optimizer.param_groups[0]['lr']:.2e} after warm-up) and try again")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def predict(model, features: list[dict], collator, batch_size: int, device, outputs: tuple[str, ...],
            per_token: bool) -> dict:
    """Each named output per feature (cut to the feature's own length when ``per_token``), as numpy."""
    import torch

    model.to(device).eval()
    found: dict[str, list] = {name: [] for name in outputs}
    with torch.no_grad():
        for first in range(0, len(features), batch_size):
            chunk = features[first:first + batch_size]
            batch = collator([{k: v for k, v in f.items() if k in _INPUTS} for f in chunk])
            result = model(**{k: v.to(device) for k, v in batch.items()})
            for name in outputs:
                values = result[name].float().cpu().numpy()
                found[name].extend(values[i][:len(f["input_ids"])] if per_token else values[i]
                                   for i, f in enumerate(chunk))
    return found


_INPUTS = ("input_ids", "token_type_ids", "attention_mask")

