"""S3 (and S3-compatible) storage. Built out by the data-plane work; see storage.Storage."""

from __future__ import annotations


class S3Storage:
    """Placeholder replaced by the full implementation (pyarrow.fs reads, boto3 conditional puts)."""
