"""Why a worker stops a run: typed errors the loop raises (the driver maps them to exit codes)."""

from __future__ import annotations

from orchestrator.errors import PermanentError, StaleAttemptError, TemporaryError


class NanLossError(PermanentError):
    """The loss became NaN or infinite; lower the learning rate or check the data."""


class FencedError(StaleAttemptError):
    """The manager answered 409: a newer attempt exists, so this one stops without checkpointing."""


class PreemptedError(TemporaryError):
    """The attempt stopped on a preemption notice after committing a checkpoint."""


class CapacityChanged(TemporaryError):
    """The worker group ends so that Ray Train re-forms it at another size inside the attempt
    (driver/elastic.py); if the attempt cannot re-form, the manager retries it."""


class NodePreempted(CapacityChanged):
    """A node of the group is under a preemption notice; the checkpoint of this step committed."""


class GrowRequested(CapacityChanged):
    """The cluster holds more workers than the group has; the checkpoint of this step committed."""


class NodeLost(TemporaryError):
    """A node of the attempt's cluster died under it (a spot reclaim without notice, a host that
    failed): capacity went away, the run itself is not at fault (driver/node_loss.py)."""
