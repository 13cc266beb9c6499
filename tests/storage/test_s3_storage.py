"""S3Storage against moto's S3 server on loopback, with and without injected faults."""

from __future__ import annotations

import os
import threading

import pytest
from botocore.exceptions import ClientError

from orchestrator.errors import NotFoundError, StorageError, TransientStorageError
from orchestrator.storage import LocalStorage, storage_for
from orchestrator.storage_s3 import S3Storage, classify


def test_protocol_round_trip(s3_env, tmp_path):
    s = storage_for(f"s3://{s3_env}/x")
    assert isinstance(s, S3Storage)
    base = f"s3://{s3_env}/run"
    s.write_bytes(f"{base}/a/one.bin", b"1" * 10)
    s.write_bytes(f"{base}/b.bin", b"2")
    assert s.exists(f"{base}/a/one.bin") and not s.exists(f"{base}/zzz")
    assert s.read_bytes(f"{base}/a/one.bin") == b"1" * 10
    assert s.list_files(base) == [f"{base}/a/one.bin", f"{base}/b.bin"]
    assert s.list_files(f"s3://{s3_env}/nothing-here") == []
    with s.open_input(f"{base}/a/one.bin") as f:
        assert f.size() == 10 and f.read_at(3, 2) == b"111"
    s.delete_prefix(base)
    assert s.list_files(base) == []


def test_multipart_upload_and_download(s3_env, tmp_path):
    s = S3Storage()
    s.MULTIPART_THRESHOLD = s.MULTIPART_CHUNK = 5 * 2**20
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * 2**20))
    s.upload_file(str(src), f"s3://{s3_env}/big.bin")
    etag = s.client.head_object(Bucket=s3_env, Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # three parts: it really was a multipart upload
    s.download_file(f"s3://{s3_env}/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_put_if_absent_has_exactly_one_winner(s3_env):
    s, uri = S3Storage(), f"s3://{s3_env}/commit/marker"
    results: list[bool] = []
    threads = [threading.Thread(target=lambda i=i: results.append(s.put_if_absent(uri, f"w{i}".encode())))
               for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [False] * 5 + [True]
    assert s.read_bytes(uri) in {f"w{i}".encode() for i in range(6)}


@pytest.mark.parametrize("uri_fmt,match", [
    ("s3://no-such-bucket-{b}/k", "bucket 'no-such-bucket-.*' does not exist"),
    ("s3://{b}/no/such/key", "no such object; check the key"),
])
def test_permanent_errors_name_the_uri_at_once(s3_env, uri_fmt, match):
    uri = uri_fmt.format(b=s3_env)
    with pytest.raises(StorageError, match=match) as info:
        S3Storage().read_bytes(uri)
    assert uri in str(info.value)
    with pytest.raises(StorageError, match=uri.replace("/", "/")):
        S3Storage().download_file(uri, "/tmp/unused-download")


# (error code, HTTP status) -> the project's error: the map from the SDK's final error, by code alone.
# Real errors from moto for the common rows are in test_error_taxonomy.py.
CODES = [
    ("NoSuchBucket", 404, StorageError), ("NoSuchKey", 404, NotFoundError), ("404", 404, NotFoundError),
    ("AccessDenied", 403, StorageError), ("403", 403, StorageError), ("InvalidAccessKeyId", 403, StorageError),
    ("SignatureDoesNotMatch", 403, StorageError), ("ExpiredToken", 400, StorageError),
    ("InvalidRequest", 400, StorageError), ("SlowDown", 503, TransientStorageError),
    ("503", 503, TransientStorageError), ("InternalError", 500, TransientStorageError),
    ("ThrottlingException", 400, TransientStorageError), ("RequestTimeout", 400, TransientStorageError),
    ("SomethingNew", 502, TransientStorageError), ("TooManyRequests", 429, TransientStorageError),
]


@pytest.mark.parametrize("code,status,kind", CODES)
def test_the_final_error_maps_by_code(code, status, kind):
    response = {"Error": {"Code": code, "Message": "whatever the text says"},
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}}}
    err = classify("s3://bkt/k", "read", ClientError(response, "GetObject"))
    assert type(err) is kind and str(err).startswith("s3://bkt/k: read")


def test_a_retry_after_header_becomes_the_delay():
    response = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503,
                                                                     "HTTPHeaders": {"retry-after": "42"}}}
    assert classify("s3://bkt/k", "write", ClientError(response, "PutObject")).delay_s == 42.0


def test_faults_are_retried_and_data_is_identical(s3_fault_proxy):
    proxy, bucket = s3_fault_proxy
    proxy.slowdown_rate, proxy.drop_rate = 0.15, 0.15
    s = S3Storage()
    blobs = {f"s3://{bucket}/f/{i:02d}": os.urandom(50_000 + i) for i in range(12)}
    for uri, data in blobs.items():
        s.write_bytes(uri, data)
    assert s.list_files(f"s3://{bucket}/f") == sorted(blobs)
    assert all(s.read_bytes(u) == d for u, d in blobs.items())
    assert s.put_if_absent(f"s3://{bucket}/m", b"x") and not s.put_if_absent(f"s3://{bucket}/m", b"y")
    assert proxy.stats["slowdown"] > 0 and proxy.stats["dropped"] > 0


def test_an_unreachable_store_becomes_transient_after_the_budget(s3_fault_proxy, monkeypatch):
    proxy, bucket = s3_fault_proxy
    monkeypatch.setenv("BERTCTL_S3_RETRY_BUDGET_S", "1.5")
    proxy.blackhole = True
    with pytest.raises(TransientStorageError, match=f"s3://{bucket}/k: write still failing after 2 attempt") as info:
        S3Storage().write_bytes(f"s3://{bucket}/k", b"data")
    assert info.value.delay_s > 0 and proxy.stats["dropped"] == 2  # the SDK's two attempts, nothing more
    proxy.blackhole = False
    S3Storage().write_bytes(f"s3://{bucket}/k", b"data")  # and it recovers


def test_local_storage_and_scheme_errors(tmp_path):
    s = storage_for(str(tmp_path))
    assert isinstance(s, LocalStorage) and isinstance(storage_for(f"file://{tmp_path}"), LocalStorage)
    assert s.put_if_absent(str(tmp_path / "m"), b"1") and not s.put_if_absent(str(tmp_path / "m"), b"2")
    with pytest.raises(StorageError, match="unsupported scheme 'gs://'"):
        storage_for("gs://bucket/x")
    with pytest.raises(StorageError, match="no such file"):
        s.read_bytes(str(tmp_path / "missing"))
