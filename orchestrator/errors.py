"""The error taxonomy shared by every layer.

A leaf module: it imports nothing from the project. Every error a user can cause or meet is
one of these, so callers can tell *permanent* failures (retrying cannot help: fix the input)
from *temporary* ones (retry after ``delay_s``).
"""

from __future__ import annotations


class BertctlError(Exception):
    """Base of every error bertctl raises on purpose. The message says what to do."""


class PermanentError(BertctlError):
    """Retrying will not help; the user must change something (a manifest, a URI, data)."""


class TemporaryError(BertctlError):
    """A transient condition (throttling, a dropped connection); retry after ``delay_s`` seconds.

    ``delay_s`` is the wait the condition itself asks for (a Retry-After, the SDK's longest backoff);
    None means it asks for none and the caller's own backoff applies. A trainer reports it with its
    final word, and the manager's policy waits that long before the next attempt.
    """

    def __init__(self, message: str, delay_s: float | None = None):
        super().__init__(message)
        self.delay_s = delay_s


class ManifestError(PermanentError):
    """A manifest failed validation. ``problems`` holds (field path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"{path}: {msg}" for path, msg in problems]
        super().__init__("invalid manifest:\n  " + "\n  ".join(lines))


class StorageError(PermanentError):
    """A permanent storage failure (no such bucket or key, access denied, invalid credentials, an
    unwritable path): the message names the URI and what to fix."""


class NotFoundError(StorageError):
    """No such object, key or file (the bucket itself may exist): a missing file of a checkpoint
    makes that checkpoint unusable, where access denied must end the job."""


class TransientStorageError(TemporaryError):
    """A retryable storage failure that outlived the SDK's retries within the retry budget."""


class DataError(PermanentError):
    """Training data is missing, corrupt or does not match its index."""


class CheckpointError(PermanentError):
    """No usable checkpoint, or a checkpoint that cannot be loaded into this run."""


class StaleAttemptError(PermanentError):
    """An older attempt tried to act after a newer one started (fencing)."""
