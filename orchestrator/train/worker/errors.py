"""Why a worker stops a run: typed errors the loop raises (the driver maps them to exit codes)."""

from __future__ import annotations

from orchestrator.errors import PermanentError, StaleAttemptError, TemporaryError


class NanLossError(PermanentError):
    """The loss became NaN or infinite; lower the learning rate or check the data."""


class FencedError(StaleAttemptError):
    """The manager answered 409: a newer attempt exists, so this one stops without checkpointing."""


class PreemptedError(TemporaryError):
    """The attempt stopped on a preemption notice after committing a checkpoint."""
