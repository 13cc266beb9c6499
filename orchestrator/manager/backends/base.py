"""What a backend is: the small interface the supervisor drives, and the registry of them.

A backend starts the trainer for one attempt (a local process group, a KubeRay RayJob), says
how it is doing, and stops it. The supervisor never knows which backend it talks to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from orchestrator.contract import EndReason
from orchestrator.errors import PermanentError


@dataclass(frozen=True)
class LaunchRequest:
    job_id: str
    attempt: int                  # the fencing token
    manifest: dict[str, Any]      # the validated PretrainJob as JSON-able data
    manager_url: str
    attempt_token: str = field(repr=False)  # secret: never logged, never rendered
    mtbp_s: float | None = None   # mean time between preemptions seen so far (checkpoint.every: auto)


class RunState(str, enum.Enum):
    """What the backend sees of an attempt right now; manager/phases.py's docstring lines it up
    with the job's Phase and the attempt's recorded AttemptState."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"   # ended; see exit_code / reason
    GONE = "gone"       # the backend has no trace of it (lost)


@dataclass(frozen=True)
class AttemptStatus:
    state: RunState
    exit_code: int | None = None
    reason: EndReason | None = None   # set when the backend itself knows why (e.g. a pod was preempted)
    message: str = ""


class Backend(Protocol):
    name: str

    def launch(self, request: LaunchRequest) -> str:
        """Start the attempt; return a handle (pid, RayJob name) the store keeps for poll/terminate."""

    def poll(self, job_id: str, attempt: int, handle: str) -> AttemptStatus:
        """Where the attempt is now. Must be cheap: the supervisor calls it every iteration."""

    def terminate(self, job_id: str, attempt: int, handle: str, grace_s: float) -> None:
        """Notice, then kill after grace_s; return only once nothing of the attempt runs (fencing)."""

    def log_path(self, job_id: str, attempt: int, handle: str) -> str | None:
        """A local file holding the attempt's output, if the backend keeps one."""


_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register(name: str, factory: Callable[..., Backend]) -> None:
    _REGISTRY[name] = factory


def get_backend(name: str, **options: Any) -> Backend:
    if name not in _REGISTRY:
        raise PermanentError(f"unknown backend '{name}'; valid backends: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**options)
