"""S3 and S3-compatible storage (MinIO, GCS interop) behind the ``storage.Storage`` Protocol.

Reads and listings use ``pyarrow.fs.S3FileSystem``; ``boto3`` is used where S3 needs it:
conditional puts (``If-None-Match: *``) for commit markers, writes, deletes and multipart uploads.
Endpoint, region and credentials come only from the environment / AWS profile chain
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for MinIO or a test server; ``AWS_REGION``).

Retries: every call is retried on transient failures (503 SlowDown, throttling, 500, connection
resets, timeouts) with exponential backoff and full jitter - 0.1 s doubling up to 5 s per wait -
for at most ``BERTCTL_S3_RETRY_BUDGET_S`` seconds (default 120) of retrying; then
TransientStorageError. Permanent failures (NoSuchBucket, NoSuchKey, AccessDenied, bad
credentials) raise StorageError at once, naming the URI and what to check.
"""

from __future__ import annotations

import os
import random
import time
from typing import Callable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from orchestrator.errors import StorageError, TransientStorageError

T = TypeVar("T")
_PERMANENT = {
    "NoSuchBucket": "the bucket does not exist; check the bucket name and AWS_ENDPOINT_URL / region",
    "NoSuchKey": "no such object; check the key (was the data written / prepared?)",
    "404": "no such object or bucket; check the URI",
    "NotFound": "no such object or bucket; check the URI",
    "AccessDenied": "access denied; check the credentials / IAM role and the bucket policy",
    "403": "access denied; check the credentials / IAM role and the bucket policy",
    "Forbidden": "access denied; check the credentials / IAM role and the bucket policy",
    "InvalidAccessKeyId": "the access key is not valid; check AWS_ACCESS_KEY_ID / the AWS profile",
    "SignatureDoesNotMatch": "the secret key does not match; check AWS_SECRET_ACCESS_KEY / the profile",
    "InvalidBucketName": "invalid bucket name; check the URI",
}
_TRANSIENT_CODES = {"SlowDown", "503", "500", "502", "504", "Throttling", "ThrottlingException", "RequestTimeout",
                    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests",
                    "RequestTimeTooSkewed", "OperationAborted", "429"}
# pyarrow reports the AWS SDK's error as text; these markers mean retrying can help.
_TRANSIENT_TEXT = ("SLOW_DOWN", "SlowDown", "SERVICE_UNAVAILABLE", "NETWORK_CONNECTION", "THROTTLING",
                   "REQUEST_TIMEOUT", "INTERNAL_FAILURE", "curlCode", "Connection", "connection", "timed out",
                   "Timeout", "HTTP response code: 503", "HTTP response code: 500", "503", "Empty reply",
                   "Broken pipe", "reset by peer", "Unable to parse ExceptionName")
_PERMANENT_TEXT = {"NO_SUCH_BUCKET": "NoSuchBucket", "NoSuchBucket": "NoSuchBucket", "ACCESS_DENIED": "AccessDenied",
                   "AccessDenied": "AccessDenied", "NO_SUCH_KEY": "NoSuchKey", "Path does not exist": "NoSuchKey",
                   "INVALID_ACCESS_KEY_ID": "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH": "SignatureDoesNotMatch",
                   "HTTP response code: 403": "AccessDenied"}


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri}: an s3 URI needs a bucket, e.g. s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def retry_budget_s() -> float:
    return float(os.environ.get("BERTCTL_S3_RETRY_BUDGET_S", "120"))


def s3_error_kind(exc: BaseException) -> tuple[str, str | None]:
    """('transient' | 'permanent' | 'unknown', the permanent code's hint key)."""
    code = _client_error_code(exc)
    if code is not None:
        if code in _PERMANENT:
            return "permanent", code
        if code in _TRANSIENT_CODES:
            return "transient", None
        return "unknown", None
    if _is_botocore_network_error(exc):
        return "transient", None
    if isinstance(exc, FileNotFoundError):
        return "permanent", "NoSuchKey"
    text = str(exc)
    for marker, code in _PERMANENT_TEXT.items():
        if marker in text:
            return "permanent", code
    if any(m in text for m in _TRANSIENT_TEXT):  # also boto3's S3UploadFailedError, which wraps as text
        return "transient", None
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "transient", None
    return "unknown", None


def _client_error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        return str(err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return None


def _is_botocore_network_error(exc: BaseException) -> bool:
    from botocore import exceptions as bce

    network = (bce.ConnectionError, bce.HTTPClientError, bce.ReadTimeoutError, bce.ConnectTimeoutError,
               bce.IncompleteReadError, bce.ResponseStreamingError, bce.EndpointConnectionError)
    return isinstance(exc, network)


def with_retries(what: str, uri: str, fn: Callable[[], T], budget_s: float | None = None) -> T:
    """Run ``fn``; retry transient failures with exponential backoff + full jitter within the budget."""
    budget = retry_budget_s() if budget_s is None else budget_s
    start, attempt = time.monotonic(), 0
    while True:
        try:
            return fn()
        except (StorageError, TransientStorageError):
            raise
        except Exception as exc:  # classified below: the SDKs raise many unrelated types
            kind, code = s3_error_kind(exc)
            if kind == "permanent":
                raise StorageError(f"{uri}: {what} failed: {_PERMANENT[code]} ({_short(exc)})") from None
            if kind == "unknown":
                raise StorageError(f"{uri}: {what} failed ({_short(exc)}); check the URI, endpoint and "
                                   "credentials") from exc
            delay = random.uniform(0, min(5.0, 0.1 * 2**attempt))
            if time.monotonic() - start + delay > budget:
                raise TransientStorageError(f"{uri}: {what} still failing after {attempt + 1} attempts over "
                                            f"{budget:.0f}s ({_short(exc)}); the object store is throttling "
                                            "or unreachable - retry later", delay_s=5.0) from exc
            attempt += 1
            time.sleep(delay)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"


class S3Storage:
    """``s3://bucket/key`` objects. Writes are single PUTs (atomic: readers see old or new, whole)."""

    MULTIPART_THRESHOLD = 64 * 2**20
    MULTIPART_CHUNK = 16 * 2**20

    def __init__(self) -> None:
        self.endpoint = endpoint_url()
        self._fs: pafs.S3FileSystem | None = None
        self._client = None

    @property
    def fs(self) -> pafs.S3FileSystem:
        if self._fs is None:
            kw: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1),
                        "connect_timeout": 10, "request_timeout": 60}
            if self.endpoint:
                parsed = urlparse(self.endpoint)
                kw.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                kw["region"] = region
            self._fs = pafs.S3FileSystem(**kw)
        return self._fs

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                         s3={"addressing_style": "path"} if self.endpoint else {})
            self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint, config=cfg)
        return self._client

    @staticmethod
    def _path(uri: str) -> str:
        bucket, key = split_uri(uri)
        return f"{bucket}/{key}"

    def exists(self, uri: str) -> bool:
        info = with_retries("stat", uri, lambda: self.fs.get_file_info(self._path(uri)))
        return info.type == pafs.FileType.File

    def read_bytes(self, uri: str) -> bytes:
        def read() -> bytes:
            # one ranged GET of the whole object: pyarrow's input *stream* reads in small requests
            # and was ~15x slower in bench/data.py
            with self.fs.open_input_file(self._path(uri)) as f:
                size = f.size()
                data = f.read_at(size, 0)
            if len(data) != size:
                raise ConnectionError(f"short read: {len(data)} of {size} bytes")
            return data
        try:
            return with_retries("read", uri, read)
        except StorageError:
            self._raise_if_no_bucket(uri)
            raise

    def _raise_if_no_bucket(self, uri: str) -> None:
        """pyarrow reports a missing bucket like a missing key; tell the user which one it is."""
        bucket, _ = split_uri(uri)
        try:
            self.client.head_bucket(Bucket=bucket)
        except Exception as exc:
            if _client_error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"{uri}: bucket '{bucket}' does not exist; {_PERMANENT['NoSuchBucket']}") from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_uri(uri)
        with_retries("write", uri, lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data))

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """Create the object only if no object has that key (S3 conditional write, If-None-Match: *).

        A retried PUT whose first try actually succeeded gets 412 on the retry; we then compare the
        stored bytes with ours and report success if they are equal (the same writer re-trying)."""
        bucket, key = split_uri(uri)
        state = {"tries": 0}

        def put() -> bool:
            state["tries"] += 1
            try:
                self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except Exception as exc:
                if _client_error_code(exc) in ("PreconditionFailed", "412"):
                    return False
                if _client_error_code(exc) in ("ConditionalRequestConflict", "409"):
                    raise ConnectionError("conditional write conflict; retrying") from exc
                raise
        created = with_retries("conditional put", uri, put)
        if not created and state["tries"] > 1:
            return self.read_bytes(uri) == data
        return created

    def list_files(self, prefix: str) -> list[str]:
        bucket, key = split_uri(prefix)
        selector = pafs.FileSelector(f"{bucket}/{key}".rstrip("/"), recursive=True, allow_not_found=True)

        def listing():
            return self.fs.get_file_info(selector)
        infos = with_retries("list", prefix, listing)
        return sorted(f"s3://{i.path}" for i in infos if i.type == pafs.FileType.File)

    def delete_prefix(self, prefix: str) -> None:
        bucket, _ = split_uri(prefix)
        keys = [split_uri(u)[1] for u in self.list_files(prefix)]
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True}
            with_retries("delete", prefix, lambda b=batch: self.client.delete_objects(Bucket=bucket, Delete=b))

    def upload_file(self, local_file: str, uri: str) -> None:
        """Upload a file; above 64 MiB boto3 uses a multipart upload (completed = the object appears)."""
        from boto3.s3.transfer import TransferConfig

        bucket, key = split_uri(uri)
        cfg = TransferConfig(multipart_threshold=self.MULTIPART_THRESHOLD, multipart_chunksize=self.MULTIPART_CHUNK,
                             max_concurrency=4)
        with_retries("upload", uri, lambda: self.client.upload_file(local_file, bucket, key, Config=cfg))

    def download_file(self, uri: str, local_file: str) -> None:
        bucket, key = split_uri(uri)
        tmp = f"{local_file}.part"
        with_retries("download", uri, lambda: self.client.download_file(bucket, key, tmp))
        os.replace(tmp, local_file)

    def open_input(self, uri: str):
        """A random-access pyarrow file (reads after opening are not retried: use read_bytes for that)."""
        return with_retries("open", uri, lambda: self.fs.open_input_file(self._path(uri)))
