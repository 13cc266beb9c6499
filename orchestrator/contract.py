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
# Operator -> trainer: every manager replica's URL, comma-separated (a highly available manager on
# hosts without one shared address); the heartbeat client fails over between them and ENV_MANAGER_URL.
ENV_MANAGER_URLS = "BERTCTL_MANAGER_URLS"
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
# Operator -> trainer: the time one S3 operation may spend waiting between the SDK's retries; it
# sets the SDKs' attempt bound (orchestrator/storage_s3.py, docs/data.md "Retries").
ENV_S3_RETRY_BUDGET_S = "BERTCTL_S3_RETRY_BUDGET_S"
# Manager -> evaluation process (python -m orchestrator.finetune.evaluate): its own token, by value
# or in a 0600 file (never argv); it may POST only that evaluation's scores (EvaluationReport).
ENV_EVALUATION_TOKEN = "BERTCTL_EVALUATION_TOKEN"
ENV_EVALUATION_TOKEN_FILE = "BERTCTL_EVALUATION_TOKEN_FILE"
# Where `bertctl data fetch` caches the named evaluation sets (orchestrator/finetune/registry_data.py).
ENV_DATA_CACHE = "BERTCTL_DATA_CACHE"
DEFAULT_DATA_CACHE = "~/.cache/bertctl/data"

# -- The environment a trainer, its Ray workers and its pods get: an ALLOWLIST --------------------
# Nothing else of the manager's environment passes: its admin token, database URL, kubeconfig,
# PG* variables and any credential added later stay with the manager (docs/manager.md, "What
# reaches a trainer"). The per-attempt names above are set by the backend, never inherited.
ATTEMPT_ENV = frozenset({ENV_JOB_ID, ENV_ATTEMPT, ENV_MANAGER_URL, ENV_ATTEMPT_TOKEN, ENV_ATTEMPT_TOKEN_FILE,
                         ENV_MTBP_S, ENV_RAY_ADDRESS})
# Operator settings the trainer reads and a process may inherit from the manager.
INHERITED_BERTCTL_ENV = frozenset({ENV_S3_RETRY_BUDGET_S, ENV_NOTICE_FILE, ENV_MANAGER_URLS})
# What any process needs to run: the executable search path and home (tool caches), the locale,
# a temporary directory, the Python environment, and the time zone for log timestamps.
_PROCESS_ENV = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TMPDIR", "TZ",
                "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV"}
# Accelerators (device selection, driver capabilities), thread pools and the ML libraries'
# offline / cache settings: the same code must see the same devices and files as it would alone.
_COMPUTE_ENV = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "TORCH_CUDA_ARCH_LIST",
                "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                "TRANSFORMERS_CACHE", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "GLOO_SOCKET_IFNAME"}
_COMPUTE_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "XDG_")
# Ray's own settings (RAY_ADDRESS on KubeRay, RAY_DEDUP_LOGS, RAY_USAGE_STATS_ENABLED, the warm head's
# RAY_AUTH_*): Ray reads them in every process of a cluster.
_RAY_PREFIXES = ("RAY_",)
# Cloud storage credentials and settings: only for a job whose data, checkpoints or prepare inputs
# are on that cloud (see cloud_schemes).
AWS_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                     "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                     "AWS_CA_BUNDLE", "AWS_EC2_METADATA_DISABLED", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                     "AWS_STS_REGIONAL_ENDPOINTS"})
_AWS_PREFIXES = ("AWS_ENDPOINT_URL",)
GCP_ENV = frozenset({"GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT",
                     "STORAGE_EMULATOR_HOST"})
_CLOUD_SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs"}


def cloud_schemes(manifest: dict | None) -> frozenset[str]:
    """"s3" / "gs" when any URI in the manifest's spec (shards, checkpoint.uri, prepare inputs,
    tokenizer vocab, ...) is on that cloud: its credentials then reach the trainer."""
    found: set[str] = set()
    stack: list = [((manifest or {}).get("spec") or {})]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and "://" in item:
            scheme = _CLOUD_SCHEMES.get(item.split("://", 1)[0].lower())
            if scheme:
                found.add(scheme)
    return frozenset(found)


def _allowed(name: str, clouds: frozenset[str]) -> bool:
    if name in _PROCESS_ENV or name in _COMPUTE_ENV or name in INHERITED_BERTCTL_ENV:
        return True
    if name.startswith(_COMPUTE_PREFIXES + _RAY_PREFIXES):
        return True
    if "s3" in clouds and (name in AWS_ENV or name.startswith(_AWS_PREFIXES)):
        return True
    return "gs" in clouds and name in GCP_ENV


def trainer_environ(source: dict[str, str], clouds: frozenset[str] = frozenset()) -> dict[str, str]:
    """The part of ``source`` (a manager's or driver's environment) a trainer process may inherit."""
    return {k: v for k, v in source.items() if _allowed(k, clouds)}


class ExitCode(enum.IntEnum):
    """Exit codes of the trainer entry point (`python -m orchestrator.train`)."""

    SUCCEEDED = 0
    USER_ERROR = 2          # bad manifest / config: never retried
    PREEMPTED = 75          # checkpointed inside the notice (EX_TEMPFAIL)
    DATA_ERROR = 65         # corrupt or missing data (EX_DATAERR): never retried
    NAN_LOSS = 66
    OUT_OF_MEMORY = 67
    INFRASTRUCTURE = 69     # a temporary storage / network / Ray failure: retried (EX_UNAVAILABLE)
    CHECKPOINT_ERROR = 73   # checkpoint URI unwritable, a checkpoint unloadable (EX_CANTCREAT): never retried
    STORAGE_ERROR = 77      # no such bucket, access denied, invalid credentials (EX_NOPERM): never retried


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
    STORAGE_ERROR = "storage_error"
    CHECKPOINT_ERROR = "checkpoint_error"
    CANCELLED = "cancelled"


EXIT_REASONS: dict[int, EndReason] = {
    ExitCode.SUCCEEDED: EndReason.SUCCEEDED,
    ExitCode.USER_ERROR: EndReason.INVALID_CONFIG,
    ExitCode.PREEMPTED: EndReason.PREEMPTED,
    ExitCode.DATA_ERROR: EndReason.DATA_ERROR,
    ExitCode.NAN_LOSS: EndReason.NAN_LOSS,
    ExitCode.OUT_OF_MEMORY: EndReason.OUT_OF_MEMORY,
    ExitCode.INFRASTRUCTURE: EndReason.INFRASTRUCTURE,
    ExitCode.CHECKPOINT_ERROR: EndReason.CHECKPOINT_ERROR,
    ExitCode.STORAGE_ERROR: EndReason.STORAGE_ERROR,
}


# Reasons an exit code shares with its own: the trainer's final heartbeat names which one it was.
# A node lost under a fixed attempt exits 69 like any temporary failure (driver/node_loss.py).
TRAINER_REFINES: dict[int, frozenset[EndReason]] = {ExitCode.INFRASTRUCTURE: frozenset({EndReason.NODE_LOST})}


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
    """A checkpoint step the trainer passed over when it resumed, and why: a committed one that failed
    verification (corrupt, truncated, unsafe to load) or a partial one whose save never committed."""

    model_config = ConfigDict(extra="forbid")
    step: int = Field(ge=0)
    uri: str = Field(max_length=1000)
    reason: str = Field(max_length=500)


class Resize(BaseModel):
    """One change of an attempt's worker group without a manager relaunch (an elastic attempt,
    docs/spot.md): a shrink on a noticed preemption (``shrink_notice``), a shrink after a node was
    lost without notice (``shrink_lost``), or a grow at a checkpoint boundary (``grow``). A grow
    whose start a loss cut short and that came back no larger is recorded as that loss.

    The pause is from the last step of the old group to the first step of the new one; its parts:
    ``detect_s`` (the old group's end -> Ray Train saw it), ``reform_s`` (-> the new workers
    started), ``load_s`` (-> model, engine and checkpoint loaded), ``first_step_s`` (-> first step)."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(ge=1, description="Sequence number within the attempt (the manager records each once).")
    kind: Literal["shrink_notice", "shrink_lost", "grow"]
    from_world: int | None = Field(None, ge=1)
    to_world: int = Field(ge=1)
    last_step: int | None = Field(None, ge=0, description="The old group's last step, when it said so.")
    resumed_from_step: int = Field(ge=0)
    pause_s: float | None = Field(None, ge=0)
    detect_s: float | None = Field(None, ge=0)
    reform_s: float | None = Field(None, ge=0)
    load_s: float | None = Field(None, ge=0)
    first_step_s: float | None = Field(None, ge=0)


class Heartbeat(BaseModel):
    """POST /v1/jobs/{job_id}/heartbeat, with the attempt token as bearer.

    status 'starting' says what the attempt does before its first training step (``phase``, sent
    at each change); 'running' is periodic once it trains; the others are the attempt's final word
    before it exits. A 'starting' heartbeat is liveness, never progress (docs/manager.md).
    """

    model_config = ConfigDict(extra="forbid")
    attempt: int = Field(ge=1, description="The fencing token: older attempts are refused (409).")
    status: Literal["starting", "running", "succeeded", "preempted", "failed"] = "running"
    phase: str | None = Field(None, max_length=200, description="With status 'starting': what it is doing now.")
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
    sample_digest: str | None = Field(None, pattern=r"^[0-9a-f]{16}$",
                                      description="The data ledger's value after this step (docs/data.md).")
    checkpoint: CheckpointRef | None = Field(None, description="Newest committed checkpoint.")
    resumed_from_step: int | None = Field(None, ge=0, description="Set on an attempt's first report.")
    checkpoint_seconds: float | None = Field(None, ge=0, description="Time spent checkpointing so far.")
    retry_after_s: float | None = Field(
        None, ge=0, le=86400, description="With a final 'failed': the wait a temporary error asked for.")
    skipped_checkpoints: list[SkippedCheckpoint] | None = Field(
        None, max_length=8, description="Checkpoints this attempt skipped when loading (recorded once as events).")
    resizes: list[Resize] | None = Field(
        None, max_length=8, description="This attempt's newest worker-group resizes (recorded once as events).")


class EvaluationReport(BaseModel):
    """POST /v1/jobs/{job_id}/evaluations, one per task as it ends, with the evaluation's own token
    as bearer (orchestrator/finetune/evaluate.py sends it; manager/evaluations.py records it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # stored as JSON, which has neither
    evaluation_id: int = Field(ge=1, le=2**31 - 1)  # an INTEGER column on PostgreSQL
    step: int = Field(ge=0, le=2**31 - 1, description="The checkpoint step evaluated.")
    task: str = Field(min_length=1, max_length=40, description="The task's name in spec.evaluation.tasks.")
    status: Literal["succeeded", "failed"]
    metrics: dict[str, float] = Field(default_factory=dict, max_length=32)
    examples_seen: int | None = Field(None, ge=0, le=2**31 - 1)
    validation_examples: int | None = Field(None, ge=0, le=2**31 - 1)
    seconds: float | None = Field(None, ge=0)
    message: str | None = Field(None, max_length=4000, description="With 'failed': why, and what to do.")


def manager_urls(raw: str | None) -> list[str]:
    """Comma-separated manager URLs -> the distinct ones, in order, without trailing slashes: the
    replica that launched the process first, then ``BERTCTL_MANAGER_URLS``'s others."""
    found: list[str] = []
    for url in (raw or "").split(","):
        url = url.strip().rstrip("/")
        if url and url not in found:
            found.append(url)
    return found
