"""One URI scheme for the whole project: local paths, file:// and s3://.

A leaf module (imports only ``errors``, and ``storage_s3`` for s3://). Reads and listings go
through ``pyarrow.fs``; ``boto3`` is used only where S3 needs it (conditional puts for commit
markers). Endpoint, region and credentials come from the environment / AWS profile chain, never
from a manifest: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points at MinIO or another
S3-compatible store.

Every failure is one of the taxonomy's types (errors.py): local ``OSError``s map by errno
(``local_error``), S3's by error code (``storage_s3.classify``). Permanent ones are StorageError,
naming the path and the fix; the others TransientStorageError.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

import pyarrow.fs as pafs

from orchestrator.errors import BertctlError, NotFoundError, StorageError, TransientStorageError


class Storage(Protocol):
    """What every backend offers. Every ``uri`` is absolute within its scheme."""

    def exists(self, uri: str) -> bool: ...
    def read_bytes(self, uri: str) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes) -> None: ...
    def put_if_absent(self, uri: str, data: bytes) -> bool: ...
    def list_files(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def upload_file(self, local_path: str, uri: str) -> None: ...
    def download_file(self, uri: str, local_path: str) -> None: ...
    def open_input(self, uri: str): ...


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without touching its scheme."""
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


_DENIED = "permission denied; check the owner and mode of the path (or choose a writable one)"
# By errno: what retrying cannot fix. Any other OSError (EIO, ESTALE on a network mount) is temporary.
_LOCAL_PERMANENT = {
    errno.ENOENT: "no such file; check the path", errno.EACCES: _DENIED, errno.EPERM: _DENIED,
    errno.EROFS: "read-only file system; choose a writable path",
    errno.ENOTDIR: "a parent of the path is a file, not a directory; check the path",
    errno.EISDIR: "the path is a directory, not a file; check the path",
    errno.ENOSPC: "no space left on the device; free some space or choose another path",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another path",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
}


def local_error(uri: str, what: str, exc: OSError) -> BertctlError:
    """The project's error for a local filesystem failure, by errno."""
    hint = _LOCAL_PERMANENT.get(exc.errno or 0)
    if hint is not None:
        if exc.errno == errno.ENOENT:
            return NotFoundError(f"{uri}: {hint}")
        return StorageError(f"{uri}: {what} failed: {hint}")
    return TransientStorageError(f"{uri}: {what} failed ({exc.strerror or type(exc).__name__}); "
                                 "the filesystem may recover - retried later")


@contextmanager
def _local(uri: str, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise local_error(uri, what, exc) from None


class LocalStorage:
    """The local filesystem. Writes are atomic (temporary file + rename)."""

    def exists(self, uri: str) -> bool:
        return local_path(uri).exists()

    def read_bytes(self, uri: str) -> bytes:
        with _local(uri, "read"):
            return local_path(uri).read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = local_path(uri)
        with _local(uri, "write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        path = local_path(uri)
        with _local(uri, "conditional put"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            try:
                os.link(tmp, path)  # link() fails if the target exists: an atomic create-if-absent
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)

    def list_files(self, prefix: str) -> list[str]:
        root = local_path(prefix)
        if not root.exists():
            return []
        base = prefix.rstrip("/")
        with _local(prefix, "list"):
            return sorted(f"{base}/{p.relative_to(root).as_posix()}" for p in root.rglob("*")
                          if p.is_file() and not p.name.endswith(".tmp"))

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(local_path(prefix), ignore_errors=True)

    def upload_file(self, local_file: str, uri: str) -> None:
        dest = local_path(uri)
        with _local(uri, "upload"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(local_file, tmp)
            os.replace(tmp, dest)

    def download_file(self, uri: str, local_file: str) -> None:
        with _local(uri, "download"):
            shutil.copyfile(local_path(uri), local_file)

    def open_input(self, uri: str):
        with _local(uri, "open"):
            return pafs.LocalFileSystem().open_input_file(str(local_path(uri)))


_S3_CACHE: dict = {}
_S3_LOCK = threading.Lock()


def storage_for(uri: str) -> Storage:
    """The backend for a URI; an unknown scheme is a permanent error naming the valid ones."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return LocalStorage()
    if scheme == "s3":
        from orchestrator.storage_s3 import S3Storage, endpoint_url, retry_budget_s  # boto3 only where S3 is used

        # one client per endpoint, identity and retry budget (the SDKs' attempt bound) in a process:
        # creating an S3 filesystem costs more than a small read
        key = (endpoint_url(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), retry_budget_s())
        with _S3_LOCK:
            if key not in _S3_CACHE:
                _S3_CACHE[key] = S3Storage()
            return _S3_CACHE[key]
    raise StorageError(f"{uri}: unsupported scheme '{scheme}://'; use a local path, file:// or s3://")
