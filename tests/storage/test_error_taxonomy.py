"""The error taxonomy decides, as a table from real errors: each row makes moto's S3 server (or the
local filesystem) fail one operation for real, and follows the error the storage raises through
the trainer's exit-code table (train/driver/outcome.py, contract.EXIT_REASONS) into the manager's
policy (manager/policy.py). Permanent errors fail the job on the first attempt with a message that
names the resource and the fix; temporary ones are retried after the delay they carry.

IAM is real too: a second moto server runs with authentication on (``INITIAL_NO_AUTH_ACTION_COUNT``
lets the set-up calls through), so "access denied" comes from a user without a policy and
"invalid credentials" from keys the server does not know.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from orchestrator.contract import EXIT_REASONS, EndReason, ExitCode
from orchestrator.errors import StorageError, TransientStorageError
from orchestrator.manager.policy import Action, decide_attempt_end
from orchestrator.storage import LocalStorage
from orchestrator.storage_s3 import SDK_MAX_BACKOFF_S, S3Storage
from orchestrator.train.driver.outcome import ending_of, retry_after_s

from tests.support.s3server import _set_env, free_port

SETUP_CALLS = 3  # create_bucket, create_user, create_access_key: the server's unauthenticated allowance


@dataclass(frozen=True)
class AuthServer:
    endpoint: str
    bucket: str
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def auth_server():
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_listening(port, proc)
        yield _set_up_iam(endpoint)
    finally:
        proc.kill()
        proc.wait()


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    import socket

    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError("the authenticating moto server did not start")


def _set_up_iam(endpoint: str) -> AuthServer:
    kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
              aws_secret_access_key="testing")
    bucket = f"guarded-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", **kw).create_bucket(Bucket=bucket)
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="no-policy")
    key = iam.create_access_key(UserName="no-policy")["AccessKey"]
    return AuthServer(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"])


# -- each row's storage and URI ---------------------------------------------------------------------
def _missing_bucket(ctx) -> tuple[object, str]:
    return S3Storage(), f"s3://missing-{uuid.uuid4().hex[:10]}/ck/step-1/state.json"


def _missing_key(ctx) -> tuple[object, str]:
    return S3Storage(), f"s3://{ctx['bucket']}/shards/no-such-shard.arrow"


def _as_user(ctx, key_id: str, secret: str) -> tuple[object, str]:
    srv, mp = ctx["auth"], ctx["monkeypatch"]
    _set_env(mp, srv.endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", key_id)
    mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
    return S3Storage(), f"s3://{srv.bucket}/ck/attempts/attempt-00000001"


def _denied(ctx):
    return _as_user(ctx, ctx["auth"].key_id, ctx["auth"].secret)


def _unknown_key(ctx):
    return _as_user(ctx, "AKIA" + "X" * 16, "not-a-secret")


def _wrong_secret(ctx):
    return _as_user(ctx, ctx["auth"].key_id, "wrong-" + ctx["auth"].secret)


def _faulty(ctx, **faults) -> tuple[object, str]:
    """An object that exists (a read must fail for the faults alone), then the faults switched on."""
    proxy, bucket = ctx["proxy"]
    storage, uri = S3Storage(), f"s3://{bucket}/ck/step-2/model.pt"
    storage.write_bytes(uri, b"weights")
    for name, value in faults.items():
        setattr(proxy, name, value)
    return storage, uri


def _local_under_a_file(ctx) -> tuple[object, str]:
    blocker = ctx["tmp_path"] / "not-a-directory"
    blocker.write_text("a file where the checkpoint directory should be")
    return LocalStorage(), str(blocker / "ck" / "attempts" / "attempt-00000001")


SOURCES = {
    "no such bucket": _missing_bucket, "no such key": _missing_key, "access denied": _denied,
    "unknown access key": _unknown_key, "wrong secret key": _wrong_secret,
    "store unreachable": lambda ctx: _faulty(ctx, blackhole=True),
    "store throttling": lambda ctx: _faulty(ctx, slowdown_rate=1.0),
    "local path under a file": _local_under_a_file,
}

# (source, operation, expected error, words the message must hold besides the URI)
PERMANENT, TEMPORARY = StorageError, TransientStorageError
TABLE = [
    ("no such bucket", "write_bytes", PERMANENT, "bucket 'missing-"),
    ("no such bucket", "read_bytes", PERMANENT, "bucket 'missing-"),
    ("no such bucket", "put_if_absent", PERMANENT, "bucket 'missing-"),
    ("no such bucket", "upload_file", PERMANENT, "bucket 'missing-"),
    ("no such bucket", "open_input", PERMANENT, "bucket 'missing-"),
    ("no such key", "read_bytes", PERMANENT, "no such object"),
    ("no such key", "download_file", PERMANENT, "no such object"),
    ("access denied", "write_bytes", PERMANENT, "access denied; check the credentials"),
    ("access denied", "read_bytes", PERMANENT, "access denied; check the credentials"),
    ("access denied", "upload_file", PERMANENT, "access denied; check the credentials"),
    ("unknown access key", "write_bytes", PERMANENT, "AWS_ACCESS_KEY_ID"),
    ("wrong secret key", "put_if_absent", PERMANENT, "AWS_SECRET_ACCESS_KEY"),
    ("store unreachable", "write_bytes", TEMPORARY, "retried later"),
    ("store unreachable", "read_bytes", TEMPORARY, "retried later"),
    ("store throttling", "upload_file", TEMPORARY, "retried later"),
    ("store throttling", "read_bytes", TEMPORARY, "retried later"),
    ("local path under a file", "write_bytes", PERMANENT, "not a directory"),
    ("local path under a file", "upload_file", PERMANENT, "not a directory"),
]


def _run(op: str, storage, uri: str, tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    src.write_bytes(b"x" * 1000)
    calls = {"write_bytes": lambda: storage.write_bytes(uri, b"x"), "read_bytes": lambda: storage.read_bytes(uri),
             "put_if_absent": lambda: storage.put_if_absent(uri, b"x"),
             "upload_file": lambda: storage.upload_file(str(src), uri),
             "download_file": lambda: storage.download_file(uri, str(tmp_path / "back.bin")),
             "open_input": lambda: storage.open_input(uri)}
    calls[op]()


@pytest.fixture
def ctx(request, tmp_path, monkeypatch):
    """Only what the row needs: the session moto, the authenticating one, or the fault proxy."""
    source = request.node.callspec.params["row"][0]
    found = {"tmp_path": tmp_path, "monkeypatch": monkeypatch}
    if source in ("no such bucket", "no such key"):
        found["bucket"] = request.getfixturevalue("s3_env")
    elif source.startswith("store "):
        found["proxy"] = request.getfixturevalue("s3_fault_proxy")
        monkeypatch.setenv("BERTCTL_S3_RETRY_BUDGET_S", "1")  # two attempts, at most 1 s between them
    elif source != "local path under a file":
        found["auth"] = request.getfixturevalue("auth_server")
    return found


@pytest.mark.parametrize("row", TABLE, ids=lambda r: f"{r[0]}-{r[1]}")
def test_real_errors_decide_the_job(row, ctx, tmp_path):
    source, op, expected, words = row
    storage, uri = SOURCES[source](ctx)
    with pytest.raises(expected) as raised:
        _run(op, storage, uri, tmp_path)
    err = raised.value
    assert uri in str(err) and words in str(err), str(err)  # names the resource and the fix

    code, reason, decisive = ending_of(_wrapped(err))
    assert decisive is err and EXIT_REASONS[code] is reason
    decision = decide_attempt_end(reason, restarts_used=0, max_restarts=10, backoff_s=5.0, max_backoff_s=300.0,
                                  retry_after_s=retry_after_s(decisive), detail=str(decisive))
    if expected is PERMANENT:
        assert (code, reason, decision.action) == (ExitCode.STORAGE_ERROR, EndReason.STORAGE_ERROR, Action.FAIL)
        assert uri in decision.why  # the job's message names the resource
    else:
        assert (code, reason, decision.action) == (ExitCode.INFRASTRUCTURE, EndReason.INFRASTRUCTURE, Action.RETRY)
        assert err.delay_s == SDK_MAX_BACKOFF_S and decision.delay_s == SDK_MAX_BACKOFF_S


def _wrapped(err: BaseException) -> BaseException:
    """As the driver meets it: raised inside a worker, carried as the cause of Ray's error."""
    try:
        raise RuntimeError("Training failed on rank 0") from err
    except RuntimeError as outer:
        return outer


def test_the_sdks_do_the_retrying_within_the_budget(s3_env, monkeypatch):
    monkeypatch.setenv("BERTCTL_S3_RETRY_BUDGET_S", "31")  # 1 + 2 + 4 + 8 + 16: six attempts
    s = S3Storage()
    assert s.attempts == 6
    assert s.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    monkeypatch.setenv("BERTCTL_S3_RETRY_BUDGET_S", "soon")
    with pytest.raises(StorageError, match="BERTCTL_S3_RETRY_BUDGET_S='soon' is not a number"):
        S3Storage()


@pytest.mark.parametrize("carried,reported", [
    (None, None), (5.0, 5.0), (0.0, 0.0), (-1.0, None), (float("inf"), None), (float("nan"), None), (1e9, 86400.0),
])
def test_the_delay_reported_stays_within_the_heartbeats_bounds(carried, reported):
    from orchestrator.contract import Heartbeat

    delay = retry_after_s(TransientStorageError("s3://b/k: write failed", delay_s=carried))
    assert delay == reported or (delay is None and reported is None)
    assert Heartbeat(attempt=1, status="failed", retry_after_s=delay).retry_after_s == delay
