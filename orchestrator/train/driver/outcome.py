"""How a training attempt ends: typed exceptions (errors.py, worker/errors.py) mapped to contract
exit codes, which the manager's policy maps to a decision (manager/policy.py).

Ray Train wraps a worker's exception (WorkerGroupError -> per-rank failures, possibly inside a
RayTaskError); ``ending_of`` digs the original out and maps it. The error taxonomy decides: a
permanent error (a storage or checkpoint error, bad config or data) gets a code that is never
retried, and beats a temporary one found beside it (another rank's); a temporary one is
INFRASTRUCTURE, retried after the delay it carries (``retry_after_s``). Anything unrecognised is
an infrastructure failure (retried), never a silent success.
"""

from __future__ import annotations

from orchestrator.contract import EndReason, ExitCode
from orchestrator.errors import (CheckpointError, DataError, ManifestError, PermanentError, StaleAttemptError,
                                 StorageError, TemporaryError)
from orchestrator.train.worker.errors import NanLossError, NodeLost, PreemptedError


# Order matters: the first matching class wins (subclasses before their bases).
_CODES: list[tuple[type[BaseException] | str, ExitCode, EndReason]] = [
    (NanLossError, ExitCode.NAN_LOSS, EndReason.NAN_LOSS),
    (PreemptedError, ExitCode.PREEMPTED, EndReason.PREEMPTED),
    (StaleAttemptError, ExitCode.INFRASTRUCTURE, EndReason.INFRASTRUCTURE),
    (ManifestError, ExitCode.USER_ERROR, EndReason.INVALID_CONFIG),
    (DataError, ExitCode.DATA_ERROR, EndReason.DATA_ERROR),
    (StorageError, ExitCode.STORAGE_ERROR, EndReason.STORAGE_ERROR),
    (CheckpointError, ExitCode.CHECKPOINT_ERROR, EndReason.CHECKPOINT_ERROR),
    (MemoryError, ExitCode.OUT_OF_MEMORY, EndReason.OUT_OF_MEMORY),
    ("OutOfMemoryError", ExitCode.OUT_OF_MEMORY, EndReason.OUT_OF_MEMORY),  # torch.OutOfMemoryError
    (PermanentError, ExitCode.USER_ERROR, EndReason.INVALID_CONFIG),  # any other: its message says what to fix
    # A temporary error like any other (exit 69, retried); its reason tells the job's record and
    # its mean time between losses that capacity went away (contract.TRAINER_REFINES).
    (NodeLost, ExitCode.INFRASTRUCTURE, EndReason.NODE_LOST),
    (TemporaryError, ExitCode.INFRASTRUCTURE, EndReason.INFRASTRUCTURE),
]


def _unwrap(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (Ray's worker failures, causes, contexts)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo.extend(failures[k] for k in sorted(failures))
        todo.extend([getattr(e, "cause", None), getattr(e, "controller_failure", None), e.__cause__])
    return seen


def _matches(exc: BaseException, kind: type[BaseException] | str) -> bool:
    if isinstance(kind, str):
        return any(c.__name__ == kind for c in type(exc).__mro__)
    return isinstance(exc, kind)


def fenced(exc: BaseException) -> bool:
    """A newer attempt exists (the manager answered 409, or the checkpoint store's fence): this
    attempt's ending is never retried inside it nor claimed as the job's."""
    return any(isinstance(e, StaleAttemptError) for e in _unwrap(exc))


def ending_of(exc: BaseException) -> tuple[ExitCode, EndReason, BaseException]:
    """(exit code, reason, the exception that decided) for a failed attempt."""
    chain = _unwrap(exc)
    for kind, code, reason in _CODES:
        for e in chain:
            if _matches(e, kind):
                return code, reason, e
    return ExitCode.INFRASTRUCTURE, EndReason.INFRASTRUCTURE, chain[-1] if chain else exc


def retry_after_s(decisive: BaseException) -> float | None:
    """The delay the deciding error asks the manager to wait before the next attempt, if any
    (within the heartbeat's bounds: a day at most; the policy caps it at max_backoff_s anyway)."""
    delay = getattr(decisive, "delay_s", None) if isinstance(decisive, TemporaryError) else None
    try:
        delay = float(delay) if delay is not None else None
    except (TypeError, ValueError):
        return None
    return None if delay is None or not 0 <= delay < float("inf") else min(delay, 86400.0)
