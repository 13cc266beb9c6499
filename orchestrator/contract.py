"""The wire contract between the trainer and the manager (they never import each other).

A leaf module. The trainer learns its identity from environment variables, reports over HTTP
with the payload below, and ends with one of the exit codes below; the manager reads the same
names. Changing anything here changes both sides at once.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Environment the manager's backends give every trainer process / pod. The token goes through
# the environment (never argv, which `ps` and Kubernetes objects show).
ENV_JOB_ID = "BERTCTL_JOB_ID"
ENV_ATTEMPT = "BERTCTL_ATTEMPT"
ENV_MANAGER_URL = "BERTCTL_MANAGER_URL"
ENV_ATTEMPT_TOKEN = "BERTCTL_ATTEMPT_TOKEN"
# Trainer driver -> its Ray workers on a shared local head: a 0600 file holding the attempt token
# (workers there inherit the head's environment, and a token in Ray's job metadata is one too many).
ENV_ATTEMPT_TOKEN_FILE = "BERTCTL_ATTEMPT_TOKEN_FILE"
ENV_NOTICE_FILE = "BERTCTL_PREEMPTION_NOTICE_FILE"
# Mean time between preemptions this job has seen, for checkpoint.every_steps: auto.
ENV_MTBP_S = "BERTCTL_MTBP_S"
# Local backend -> trainer: the address of the warm local Ray head to connect to (instead of
# starting a cluster for the attempt); KubeRay sets RAY_ADDRESS itself.
ENV_RAY_ADDRESS = "BERTCTL_RAY_ADDRESS"


class ExitCode(enum.IntEnum):
    """Exit codes of the trainer entry point (`python -m orchestrator.train`)."""

    SUCCEEDED = 0
    USER_ERROR = 2          # bad manifest / config: never retried
    PREEMPTED = 75          # checkpointed inside the notice (EX_TEMPFAIL)
    DATA_ERROR = 65         # corrupt or missing data (EX_DATAERR): never retried
    NAN_LOSS = 66
    OUT_OF_MEMORY = 67
    INFRASTRUCTURE = 69     # storage / network / Ray failure: retried (EX_UNAVAILABLE)


class EndReason(str, enum.Enum):
    """Why an attempt ended; the supervisor's policy maps each to a decision."""

    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"
    NODE_LOST = "node_lost"
    WORKER_LOST = "worker_lost"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    INFRASTRUCTURE = "infrastructure"
    INVALID_CONFIG = "invalid_config"
    DATA_ERROR = "data_error"
    OUT_OF_MEMORY = "out_of_memory"
    NAN_LOSS = "nan_loss"
    IMAGE_PULL = "image_pull"
    CANCELLED = "cancelled"


EXIT_REASONS: dict[int, EndReason] = {
    ExitCode.SUCCEEDED: EndReason.SUCCEEDED,
    ExitCode.USER_ERROR: EndReason.INVALID_CONFIG,
    ExitCode.PREEMPTED: EndReason.PREEMPTED,
    ExitCode.DATA_ERROR: EndReason.DATA_ERROR,
    ExitCode.NAN_LOSS: EndReason.NAN_LOSS,
    ExitCode.OUT_OF_MEMORY: EndReason.OUT_OF_MEMORY,
    ExitCode.INFRASTRUCTURE: EndReason.INFRASTRUCTURE,
}


def reason_for_exit(code: int | None) -> EndReason:
    """An exit code the trainer did not choose (a signal, a crash) means the worker was lost."""
    if code is None:
        return EndReason.WORKER_LOST
    return EXIT_REASONS.get(code, EndReason.WORKER_LOST)


class CheckpointRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: int = Field(ge=0)
    uri: str
    world_size: int = Field(ge=1)
    save_seconds: float | None = Field(None, ge=0, description="Wall time of the save and commit.")


class SkippedCheckpoint(BaseModel):
    """A committed checkpoint the trainer refused to load (partial or corrupt), and why."""

    model_config = ConfigDict(extra="forbid")
    step: int = Field(ge=0)
    uri: str = Field(max_length=1000)
    reason: str = Field(max_length=500)


class Heartbeat(BaseModel):
    """POST /v1/jobs/{job_id}/heartbeat, with the attempt token as bearer.

    status 'running' is periodic; the others are the attempt's final word before it exits.
    """

    model_config = ConfigDict(extra="forbid")
    attempt: int = Field(ge=1, description="The fencing token: older attempts are refused (409).")
    status: Literal["running", "succeeded", "preempted", "failed"] = "running"
    reason: EndReason | None = None
    message: str | None = Field(None, max_length=4000)
    step: int = Field(0, ge=0)
    max_steps: int | None = Field(None, ge=1)
    loss: float | None = None
    mlm_accuracy: float | None = None
    nsp_accuracy: float | None = None
    tokens_per_s: float | None = Field(None, ge=0)
    lr: float | None = None
    tokens_seen: int | None = Field(None, ge=0)
    world_size: int | None = Field(None, ge=1)
    checkpoint: CheckpointRef | None = Field(None, description="Newest committed checkpoint.")
    resumed_from_step: int | None = Field(None, ge=0, description="Set on an attempt's first report.")
    checkpoint_seconds: float | None = Field(None, ge=0, description="Time spent checkpointing so far.")
    skipped_checkpoints: list[SkippedCheckpoint] | None = Field(
        None, max_length=8, description="Checkpoints this attempt skipped when loading (recorded once as events).")
