"""``finetune(config)``: MODEL + two splits -> a fine-tuned Hugging Face directory and its scores.json.

Callable in-process (the CLI) or as a process (``bertctl finetune``, for a manager that runs it
beside training). The output directory holds the model with its task head and labels, the
tokenizer, and scores.json: task, metric names and values on the validation split, examples
seen, seconds, and what produced them.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.finetune import tasks
from orchestrator.finetune.loop import Hyper, pick_device, train
from orchestrator.finetune.source import FinetuneInputError, load_head, load_tokenizer, local_file, local_model_dir

log = logging.getLogger("bertctl.finetune")

SCORES = "scores.json"
# Per-task defaults: the usual BERT fine-tuning settings (a few epochs at a few e-5).
DEFAULTS = {
    "classification": Hyper(epochs=3, lr=5e-5, batch_size=32, max_length=128),
    "token-classification": Hyper(epochs=3, lr=5e-5, batch_size=32, max_length=128),
    "question-answering": Hyper(epochs=2, lr=5e-5, batch_size=16, max_length=384),
}


@dataclass
class FinetuneConfig:
    model: str
    task: str
    train: str
    validation: str
    output: Path
    options: tasks.Options = field(default_factory=tasks.Options)
    overrides: dict[str, Any] = field(default_factory=dict)  # Hyper fields: epochs, lr, batch_size, ...
    device: str | None = None
    progress: bool = True

    def hyper(self) -> Hyper:
        if self.task not in DEFAULTS:
            raise FinetuneInputError(f"--task {self.task}: unknown task; choose one of {', '.join(tasks.TASKS)}")
        given = {k: v for k, v in self.overrides.items() if v is not None}
        bad = [f"{k}={v}" for k, v in given.items() if k != "seed" and not v > 0]
        if bad:
            raise FinetuneInputError(f"{', '.join(bad)}: hyper-parameters must be positive; change the option")
        return replace(DEFAULTS[self.task], **given)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and write ``config.output``; returns what scores.json holds."""
    started = time.time()
    hp = config.hyper()
    with tempfile.TemporaryDirectory(prefix="bertctl-finetune-") as tmp:
        scratch = Path(tmp)
        model_dir = local_model_dir(config.model, scratch)
        tokenizer, model_config = load_tokenizer(model_dir, config.model)
        hp = _fit_length(hp, model_config.max_position_embeddings)
        splits = [(local_file(uri, scratch), uri) for uri in (config.train, config.validation)]
        prepared = tasks.prepare_task(config.task, tokenizer, *splits, hp.max_length, config.options)
        model = _head(prepared, model_dir, config.model, hp.seed)
        device = pick_device(config.device)
        steps, seen = train(model, prepared.train, prepared.collator, hp, device, config.progress,
                            f"fine-tuning ({config.task})")
        metrics = prepared.evaluate(model, hp.batch_size, device)
        _save(model.cpu(), tokenizer, config.output)
    scores = _scores(config, hp, prepared, metrics, steps, seen, time.time() - started, str(device))
    (config.output / SCORES).write_text(json.dumps(scores, indent=1) + "\n")
    return scores


def _fit_length(hp: Hyper, positions: int) -> Hyper:
    """--max-length past the model's position embeddings cannot run: use what the model has."""
    if hp.max_length <= positions:
        return hp
    log.warning("max length %d > the model's %d positions: using %d", hp.max_length, positions, positions)
    return replace(hp, max_length=positions)


def _head(prepared: tasks.Prepared, model_dir: Path, where: str, seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)  # the new head's initialisation: the same whatever ran before in this process
    return load_head(getattr(transformers, prepared.head), model_dir, where, **prepared.config)


def _save(model, tokenizer, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output), safe_serialization=True)
    tokenizer.save_pretrained(str(output))


def _scores(config: FinetuneConfig, hp: Hyper, prepared: tasks.Prepared, metrics: dict, steps: int, seen: int,
            seconds: float, device: str) -> dict[str, Any]:
    return {"task": config.task, "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
            "examples_seen": seen, "steps": steps, "seconds": round(seconds, 3),
            "validation_examples": prepared.validation_examples, "train_features": len(prepared.train),
            "model": config.model, "train": config.train, "validation": config.validation, "device": device,
            "hyperparameters": asdict(hp), **prepared.notes}
