"""The manager's tables (SQLAlchemy 2 ORM). Schema changes go through an Alembic migration.

Times are stored as float seconds since the epoch: the supervisor compares them with the
``now`` it is given, which keeps every decision testable without a clock.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class AttemptState(str, enum.Enum):
    """An attempt as the manager records it; phases.py's docstring lines it up with the job's
    Phase and the backend's RunState (the values are stored: renaming one needs a migration)."""

    LAUNCHING = "launching"   # row exists, backend.launch may or may not have returned
    RUNNING = "running"       # the backend holds a handle
    ENDED = "ended"           # the backend has confirmed nothing of it runs (fenced)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    submission_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    backend: Mapped[str] = mapped_column(String(40))
    phase: Mapped[str] = mapped_column(String(20), index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    current_attempt: Mapped[int] = mapped_column(Integer, default=0)
    restarts_used: Mapped[int] = mapped_column(Integer, default=0)
    next_launch_at: Mapped[float] = mapped_column(Float, default=0.0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    max_steps: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    handle: Mapped[str] = mapped_column(String(200), default="")
    log_path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    end_reason: Mapped[str | None] = mapped_column(String(40))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text, default="")
    final_status: Mapped[str | None] = mapped_column(String(20))   # the trainer's own final word
    final_reason: Mapped[str | None] = mapped_column(String(40))
    last_heartbeat_at: Mapped[float | None] = mapped_column(Float)
    heartbeats: Mapped[int] = mapped_column(Integer, default=0)
    startup_phase: Mapped[str | None] = mapped_column(String(200))  # the last 'starting' heartbeat's phase
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    first_step: Mapped[int | None] = mapped_column(Integer)
    first_step_at: Mapped[float | None] = mapped_column(Float)
    last_step: Mapped[int] = mapped_column(Integer, default=0)
    last_step_at: Mapped[float | None] = mapped_column(Float)
    checkpoint_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    checkpoint_step_at_end: Mapped[int | None] = mapped_column(Integer)
    steps_lost: Mapped[int | None] = mapped_column(Integer)
    recovery_s: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", "uri"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    world_size: Mapped[int] = mapped_column(Integer)
    save_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    ts: Mapped[float] = mapped_column(Float)
    type: Mapped[str] = mapped_column(String(40))
    attempt: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Token(Base):
    """Bearer tokens, stored as sha256 of random high-entropy secrets (never the secret)."""

    __tablename__ = "tokens"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))           # "attempt" (the admin token lives in memory)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class MetricPoint(Base):
    """One step's training metrics from a heartbeat, kept for the dashboard and the data audit;
    long runs are downsampled (docs/manager.md gives the bound per job)."""

    __tablename__ = "metric_points"
    # (job_id, step): the job's highest step is one index seek on every heartbeat (metric_history.py).
    __table_args__ = (UniqueConstraint("job_id", "attempt", "step"),
                      Index("ix_metric_points_job_id_step", "job_id", "step"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    mlm_accuracy: Mapped[float | None] = mapped_column(Float)
    nsp_accuracy: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    world_size: Mapped[int | None] = mapped_column(Integer)
    sample_digest: Mapped[str | None] = mapped_column(String(64))  # the data ledger's chain value


class LeaderLease(Base):
    """Which manager replica supervises: one row per lease name. ``epoch`` grows by one at each
    takeover, so a replica that lost the lease can tell (and is told) it is stale."""

    __tablename__ = "leader_leases"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    epoch: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float)


class Evaluation(Base):
    """One checkpoint step fine-tuned on spec.evaluation's tasks (manager/evaluations.py)."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("job_id", "step"), Index("ix_evaluations_state", "state"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    checkpoint_uri: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20))  # evaluations.State
    backend: Mapped[str] = mapped_column(String(40))
    handle: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(64), default="")  # sha256 of its report token ("" once ended)
    log_path: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)


class EvaluationScore(Base):
    """One task's outcome on one checkpoint step: its metrics, or why it failed."""

    __tablename__ = "evaluation_scores"
    __table_args__ = (UniqueConstraint("job_id", "step", "task"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20))  # succeeded | failed
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    examples_seen: Mapped[int | None] = mapped_column(Integer)
    validation_examples: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
