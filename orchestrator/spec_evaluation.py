"""``spec.evaluation`` of a PretrainJob: downstream tasks the manager fine-tunes checkpoints on.

A leaf module (imports only pydantic): spec.py holds it as one field, the manager reads it to
decide which committed checkpoints are due, and ``python -m orchestrator.finetune.evaluate`` reads
the tasks it is handed with the same models. docs/finetune.md, "Evaluating checkpoints during
pretraining", describes the behaviour.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TASK_KINDS = ("classification", "token-classification", "question-answering")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
# Scores of one step come from one process, tasks one after another: a bound keeps it finite.
MAX_TASKS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class EvaluationBudget(_Strict):
    """What one task may spend on one checkpoint; past max_seconds the task fails (never the job)."""

    max_seconds: float = Field(900.0, gt=0, le=86400,
                               description="Wall time for fine-tuning and scoring one task on one checkpoint.")
    max_train_examples: int | None = Field(
        None, ge=1, description="Stop fine-tuning after this many training examples (whole batches).")
    epochs: float | None = Field(None, gt=0, le=100, description="Epochs over the training split (default: the "
                                 "task's, see `bertctl finetune`); max_train_examples stops earlier.")


class EvaluationTask(_Strict):
    name: str = Field(description="Names the scores: lowercase letters, digits, '-' or '_', at most 40 chars.")
    task: Literal[TASK_KINDS] = Field(description="classification | token-classification | "  # type: ignore[valid-type]
                                      "question-answering")
    train: str = Field(min_length=1, description="Training split (local path or s3:// URI).")
    validation: str = Field(min_length=1, description="Validation split, scored (local path or s3:// URI).")
    text_column: str = Field("text", description="classification: the text column.")
    text_pair_column: str | None = Field(None, description="classification: a second text column.")
    label_column: str = Field("label", description="classification: the label column.")
    tag_column: int = Field(-1, description="token-classification: the tag column (0: the token; -1: last).")
    doc_stride: int = Field(128, ge=1, description="question-answering: overlap of the context windows.")
    max_length: int | None = Field(None, ge=8, le=8192, description="Tokens per example (task default otherwise).")
    batch_size: int | None = Field(None, ge=1, le=4096)
    lr: float | None = Field(None, gt=0, le=1.0)
    budget: EvaluationBudget = Field(default_factory=EvaluationBudget)

    @field_validator("name")
    @classmethod
    def _label(cls, v: str) -> str:
        if len(v) > 40 or not _NAME_RE.match(v):
            raise ValueError("must be at most 40 lowercase letters, digits, '-' or '_', starting and ending with "
                             "a letter or digit (e.g. 'ner' or 'sentiment')")
        return v


class EvaluationResources(_Strict):
    """The evaluation's own resources, apart from training's: threads of one niced process on the
    local backend, the requests of its own pod on KubeRay."""

    cpus: float = Field(1, gt=0, le=256, description="CPU threads (local) / CPU request (Kubernetes).")
    memory: str = Field("4Gi", description="Kubernetes quantity of the evaluation pod, e.g. 8Gi.")
    gpus: int = Field(0, ge=0, le=8, description="GPUs of the evaluation pod; on the local backend >= 1 means "
                      "it may use CUDA (sharing the training GPUs), 0 keeps it on the CPU.")

    @field_validator("memory")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not _QUANTITY_RE.match(v):
            raise ValueError("must be a Kubernetes quantity such as '8Gi' or '512Mi'")
        return v

    def threads(self) -> int:
        return max(1, int(self.cpus))


class EvaluationSpec(_Strict):
    tasks: list[EvaluationTask] = Field(min_length=1, max_length=MAX_TASKS,
                                        description="The downstream tasks every due checkpoint is fine-tuned on.")
    every_checkpoints: int = Field(1, ge=1, description="Evaluate every Nth committed checkpoint; the final one "
                                   "(step == training.max_steps) always.")
    resources: EvaluationResources = Field(default_factory=EvaluationResources)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[EvaluationTask]) -> list[EvaluationTask]:
        names = [t.name for t in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"task names must be unique (scores are recorded per name); {twice} appear more "
                             "than once: rename them")
        return v

    def budget_s(self) -> float:
        """The longest one evaluation may run: every task's budget, one after another."""
        return sum(t.budget.max_seconds for t in self.tasks)

    def with_absolute_paths(self) -> "EvaluationSpec":
        """Local data paths made absolute, as spec.py does for shards: the evaluation process
        starts in another directory (and on another machine on KubeRay, where a path must be s3://)."""
        def absolute(uri: str) -> str:
            return uri if "://" in uri else str(Path(uri).resolve())
        tasks = [t.model_copy(update={"train": absolute(t.train), "validation": absolute(t.validation)})
                 for t in self.tasks]
        return self.model_copy(update={"tasks": tasks})
