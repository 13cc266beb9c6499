"""One URI scheme for the whole project: local paths, file:// and s3://.

A leaf module (imports only ``errors``). Reads and listings go through ``pyarrow.fs``; ``boto3``
is used only where S3 needs it (conditional puts for commit markers). Endpoint, region and
credentials come from the environment / AWS profile chain, never from a manifest:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points at MinIO or another S3-compatible store.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import pyarrow.fs as pafs

from orchestrator.errors import StorageError


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


class LocalStorage:
    """The local filesystem. Writes are atomic (temporary file + rename)."""

    def exists(self, uri: str) -> bool:
        return local_path(uri).exists()

    def read_bytes(self, uri: str) -> bytes:
        try:
            return local_path(uri).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file; check the path") from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        path = local_path(uri)
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
        return sorted(f"{base}/{p.relative_to(root).as_posix()}" for p in root.rglob("*")
                      if p.is_file() and not p.name.endswith(".tmp"))

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(local_path(prefix), ignore_errors=True)

    def upload_file(self, local_file: str, uri: str) -> None:
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(local_file, tmp)
        os.replace(tmp, dest)

    def download_file(self, uri: str, local_file: str) -> None:
        try:
            shutil.copyfile(local_path(uri), local_file)
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file; check the path") from None

    def open_input(self, uri: str):
        try:
            return pafs.LocalFileSystem().open_input_file(str(local_path(uri)))
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file; check the path") from None


_S3_CACHE: dict = {}
_S3_LOCK = threading.Lock()


def storage_for(uri: str) -> Storage:
    """The backend for a URI; an unknown scheme is a permanent error naming the valid ones."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return LocalStorage()
    if scheme == "s3":
        from orchestrator.storage_s3 import S3Storage, endpoint_url  # boto3 only where S3 is used

        # one client per endpoint and process: creating an S3 filesystem costs more than a small read
        key = (endpoint_url(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
        with _S3_LOCK:
            if key not in _S3_CACHE:
                _S3_CACHE[key] = S3Storage()
            return _S3_CACHE[key]
    raise StorageError(f"{uri}: unsupported scheme '{scheme}://'; use a local path, file:// or s3://")
