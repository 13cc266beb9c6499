"""S3 and S3-compatible storage (MinIO, GCS interop) behind the ``storage.Storage`` Protocol.

Reads and listings use ``pyarrow.fs.S3FileSystem``; ``boto3`` is used where S3 needs it:
conditional puts (``If-None-Match: *``) for commit markers, writes, deletes and multipart uploads.
Endpoint, region and credentials come only from the environment / AWS profile chain
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for MinIO or a test server; ``AWS_REGION``).

Retries are the SDKs' own; this module has no retry loop. botocore runs in its ``standard`` retry
mode and pyarrow with ``AwsStandardS3RetryStrategy`` (the AWS C++ SDK's standard strategy): both
retry throttling (SlowDown), 500/502/503/504, request timeouts and dropped connections, waiting
a random part of 1, 2, 4, 8, 16, then 20 s between attempts. One budget bounds every operation:
``BERTCTL_S3_RETRY_BUDGET_S`` (default 120 s) is the most time it may spend waiting between
attempts, and ``sdk_max_attempts`` turns it into the attempt bound both SDKs get (10 at 120 s).
Each attempt is itself bounded by the connect (10 s) and request (60 s of silence) timeouts.

What the SDK finally raises is mapped to the project's taxonomy by code (``classify``): a botocore
``ClientError``'s error code and HTTP status, botocore's connection exception types, pyarrow's
``FileNotFoundError`` (errno ENOENT). pyarrow reports every other S3 failure as an ``OSError``
whose only detail is text, so such a failure is diagnosed with one single-attempt HEAD through
botocore, whose answer has a code (``S3Storage._diagnose``). Permanent failures raise
StorageError naming the URI and the fix; temporary ones TransientStorageError with ``delay_s``.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs

from orchestrator.contract import ENV_S3_RETRY_BUDGET_S
from orchestrator.errors import BertctlError, NotFoundError, StorageError, TransientStorageError

DEFAULT_RETRY_BUDGET_S = 120.0
SDK_MAX_BACKOFF_S = 20.0       # both SDKs' cap on one wait; also the delay a temporary error asks for
_CHECK_ACCESS = "access denied; check the credentials / IAM role and the bucket policy"
_PERMANENT = {
    "NoSuchBucket": "bucket '{bucket}' does not exist; check the bucket name, AWS_ENDPOINT_URL and the region",
    "NoSuchKey": "no such object; check the key (was the data written / prepared?)",
    "404": "no such object or bucket; check the URI",
    "NotFound": "no such object or bucket; check the URI",
    "AccessDenied": _CHECK_ACCESS, "403": _CHECK_ACCESS, "Forbidden": _CHECK_ACCESS,
    "AllAccessDisabled": _CHECK_ACCESS, "AccountProblem": _CHECK_ACCESS,
    "InvalidAccessKeyId": "the access key is not valid; check AWS_ACCESS_KEY_ID / the AWS profile",
    "SignatureDoesNotMatch": "the secret key does not match; check AWS_SECRET_ACCESS_KEY / the profile",
    "ExpiredToken": "the session token expired; refresh the credentials (AWS_SESSION_TOKEN / the role)",
    "InvalidToken": "the session token is not valid; check AWS_SESSION_TOKEN / the role",
    "InvalidBucketName": "'{bucket}' is not a valid bucket name; check the URI",
    "PermanentRedirect": "bucket '{bucket}' is in another region; set AWS_REGION to the bucket's region",
}
# Codes the SDKs retry (or that clear up on their own); a 5xx or 429 of any code is one too.
_TEMPORARY = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
              "RequestThrottled", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
              "InternalError", "ServiceUnavailable", "OperationAborted", "RequestTimeTooSkewed",
              "ConditionalRequestConflict"}


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri}: an s3 URI needs a bucket, e.g. s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def retry_budget_s() -> float:
    """Seconds one S3 operation may spend waiting between the SDK's attempts (the environment's)."""
    raw = os.environ.get(ENV_S3_RETRY_BUDGET_S, "").strip()
    if not raw:
        return DEFAULT_RETRY_BUDGET_S
    try:
        budget = float(raw)
    except ValueError:
        budget = -1.0
    if not 0 <= budget < float("inf"):
        raise StorageError(f"{ENV_S3_RETRY_BUDGET_S}={raw!r} is not a number of seconds >= 0; "
                           f"unset it for the default ({DEFAULT_RETRY_BUDGET_S:g} s)")
    return budget


def sdk_max_attempts(budget_s: float) -> int:
    """The most attempts whose worst-case waits (1, 2, 4, ... capped at 20 s) fit in ``budget_s``."""
    attempts, waited = 1, 0.0
    while attempts < 50:
        wait = min(SDK_MAX_BACKOFF_S, 2.0 ** (attempts - 1))
        if waited + wait > budget_s:
            break
        waited, attempts = waited + wait, attempts + 1
    return attempts


def classify(uri: str, what: str, exc: BaseException) -> BertctlError:
    """The project's error for the SDK's final one: by error code, HTTP status, errno or type."""
    if isinstance(exc, BertctlError):
        return exc
    client_error = _client_error(exc)
    if client_error is not None:
        return _from_response(uri, what, client_error.response, client_error)
    if isinstance(exc, FileNotFoundError):  # pyarrow: errno ENOENT, a missing key (or bucket)
        return permanent(uri, what, "NoSuchKey")
    if _is_connection_error(exc):
        return temporary(uri, what, exc)
    return StorageError(f"{uri}: {what} failed ({_short(exc)}); check the URI, the endpoint and the credentials")


def _from_response(uri: str, what: str, response: dict, exc: BaseException) -> BertctlError:
    code = str(response.get("Error", {}).get("Code") or "")
    meta = response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    if code in _PERMANENT:
        return permanent(uri, what, code)
    if code in _TEMPORARY or status == 429 or status >= 500:
        return temporary(uri, what, exc, _retry_after(meta.get("HTTPHeaders") or {}))
    return StorageError(f"{uri}: {what} failed with {code or status} ({_short(exc)}); check the URI, "
                        "the endpoint and the credentials")


_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def permanent(uri: str, what: str, code: str) -> StorageError:
    hint = _PERMANENT[code].format(bucket=split_uri(uri)[0])
    kind = NotFoundError if code in _MISSING else StorageError
    return kind(f"{uri}: {what} failed: {hint} ({code})")


def temporary(uri: str, what: str, exc: BaseException, delay_s: float | None = None) -> TransientStorageError:
    budget = retry_budget_s()
    return TransientStorageError(
        f"{uri}: {what} still failing after {sdk_max_attempts(budget)} attempt(s) within the {budget:g} s "
        f"retry budget ({_short(exc)}); the object store is throttling or unreachable - retried later "
        f"(raise {ENV_S3_RETRY_BUDGET_S} to wait longer in place)",
        delay_s=SDK_MAX_BACKOFF_S if delay_s is None else delay_s)


def _retry_after(headers: dict) -> float | None:
    """A Retry-After header in seconds (the form S3-compatible stores send; at most an hour), else None."""
    try:
        value = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(value, 3600.0) if 0 <= value < float("inf") else None


def _client_error(exc: BaseException):
    """The botocore ClientError in ``exc``'s chain: boto3's S3UploadFailedError keeps it as context."""
    from botocore.exceptions import ClientError

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _is_connection_error(exc: BaseException) -> bool:
    """botocore's and Python's exception types for a connection that failed, dropped or timed out."""
    from botocore import exceptions as bce

    network = (bce.ConnectionError, bce.HTTPClientError, bce.ReadTimeoutError, bce.IncompleteReadError,
               bce.ResponseStreamingError, ConnectionError, TimeoutError)
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, network):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _pyarrow_fs(endpoint: str | None, attempts: int) -> pafs.S3FileSystem:
    kw: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
                "connect_timeout": 10, "request_timeout": 60}
    if endpoint:
        parsed = urlparse(endpoint)
        kw.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def _boto_client(endpoint: str | None, attempts: int):
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=10,
                 read_timeout=60, s3={"addressing_style": "path"} if endpoint else {})
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=cfg)


class S3Storage:
    """``s3://bucket/key`` objects. Writes are single PUTs (atomic: readers see old or new, whole)."""

    MULTIPART_THRESHOLD = 64 * 2**20
    MULTIPART_CHUNK = 16 * 2**20

    def __init__(self) -> None:
        self.endpoint = endpoint_url()
        self.attempts = sdk_max_attempts(retry_budget_s())
        self._fs: pafs.S3FileSystem | None = None
        self._client = None
        self._probe_client = None

    @property
    def fs(self) -> pafs.S3FileSystem:
        if self._fs is None:
            self._fs = _pyarrow_fs(self.endpoint, self.attempts)
        return self._fs

    @property
    def client(self):
        if self._client is None:
            self._client = _boto_client(self.endpoint, self.attempts)
        return self._client

    @property
    def _probe(self):
        """Single attempt: it diagnoses a failure the SDK already retried, and never retries it again."""
        if self._probe_client is None:
            self._probe_client = _boto_client(self.endpoint, 1)
        return self._probe_client

    @staticmethod
    def _path(uri: str) -> str:
        bucket, key = split_uri(uri)
        return f"{bucket}/{key}"

    def _diagnose(self, uri: str, what: str, exc: BaseException) -> BertctlError:
        """pyarrow's final error, classified through botocore's codes (the module docstring says why):
        HEAD the bucket, then the object; whatever answers with an error code decides. When both
        answer, the object is there and readable, so pyarrow's failure was a temporary one."""
        bucket, key = split_uri(uri)
        try:
            self._probe.head_bucket(Bucket=bucket)
        except Exception as probe:  # noqa: BLE001 - classified by its code
            found = _client_error(probe)
            if found is not None and found.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return permanent(uri, what, "NoSuchBucket")  # a HEAD's 404 has no code of its own
            return classify(uri, what, probe)
        if isinstance(exc, FileNotFoundError):
            return classify(uri, what, exc)
        if key:
            try:
                self._probe.head_object(Bucket=bucket, Key=key)
            except Exception as probe:  # noqa: BLE001 - classified by its code
                return classify(uri, what, probe)
        return temporary(uri, what, exc)

    def _read(self, uri: str, what: str, fn):
        """A pyarrow call, its final error classified."""
        try:
            return fn()
        except OSError as exc:
            raise self._diagnose(uri, what, exc) from exc

    def _call(self, uri: str, what: str, fn):
        """A botocore / boto3 call, its final error classified."""
        try:
            return fn()
        except BertctlError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDKs raise many types; classify maps them all
            raise classify(uri, what, exc) from exc

    def exists(self, uri: str) -> bool:
        info = self._read(uri, "stat", lambda: self.fs.get_file_info(self._path(uri)))
        return info.type == pafs.FileType.File

    def read_bytes(self, uri: str) -> bytes:
        def read() -> tuple[int, bytes]:
            # one ranged GET of the whole object: pyarrow's input *stream* reads in small requests
            # and was ~15x slower in bench/data.py
            with self.fs.open_input_file(self._path(uri)) as f:
                size = f.size()
                return size, f.read_at(size, 0)
        size, data = self._read(uri, "read", read)
        if len(data) != size:
            raise temporary(uri, "read", ConnectionError(f"short read: {len(data)} of {size} bytes"))
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_uri(uri)
        self._call(uri, "write", lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data))

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """Create the object only if no object has that key (S3 conditional write, If-None-Match: *).

        When the SDK retried the PUT (its first try may have landed before the connection broke),
        a 412 may be our own earlier try: the stored bytes are compared with ours then."""
        bucket, key = split_uri(uri)
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except Exception as exc:  # noqa: BLE001 - classified below
            found = _client_error(exc)
            if found is None or found.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise classify(uri, "conditional put", exc) from exc
            retried = found.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
        return retried and self.read_bytes(uri) == data

    def list_files(self, prefix: str) -> list[str]:
        bucket, key = split_uri(prefix)
        selector = pafs.FileSelector(f"{bucket}/{key}".rstrip("/"), recursive=True, allow_not_found=True)
        infos = self._read(prefix, "list", lambda: self.fs.get_file_info(selector))
        return sorted(f"s3://{i.path}" for i in infos if i.type == pafs.FileType.File)

    def delete_prefix(self, prefix: str) -> None:
        bucket, _ = split_uri(prefix)
        keys = [split_uri(u)[1] for u in self.list_files(prefix)]
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True}
            self._call(prefix, "delete", lambda b=batch: self.client.delete_objects(Bucket=bucket, Delete=b))

    def upload_file(self, local_file: str, uri: str) -> None:
        """Upload a file; above 64 MiB boto3 uses a multipart upload (completed = the object appears)."""
        from boto3.s3.transfer import TransferConfig

        bucket, key = split_uri(uri)
        cfg = TransferConfig(multipart_threshold=self.MULTIPART_THRESHOLD, multipart_chunksize=self.MULTIPART_CHUNK,
                             max_concurrency=4)
        self._call(uri, "upload", lambda: self.client.upload_file(local_file, bucket, key, Config=cfg))

    def download_file(self, uri: str, local_file: str) -> None:
        """s3transfer re-requests a download whose body broke off (its ``num_download_attempts``, 5):
        botocore cannot retry a failure that comes after the response began."""
        bucket, key = split_uri(uri)
        tmp = f"{local_file}.part"
        self._call(uri, "download", lambda: self.client.download_file(bucket, key, tmp))
        os.replace(tmp, local_file)

    def open_input(self, uri: str):
        """A random-access pyarrow file (reads after opening are retried by pyarrow's SDK alone)."""
        return self._read(uri, "open", lambda: self.fs.open_input_file(self._path(uri)))

