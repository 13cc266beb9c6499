"""A job whose checkpoint bucket does not exist fails after one attempt, naming the bucket: the real
manager (embedded, SQLite, local backend) launches the real trainer (`python -m orchestrator.train`)
against moto's S3 server. The trainer checks its checkpoint URI before it starts Ray (registering
the attempt is its first write there), so the attempt ends in seconds with the storage exit code,
and the policy fails the job instead of retrying it `max_restarts` times.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import yaml

from orchestrator.contract import EndReason, ExitCode
from orchestrator.manager.embedded import EmbeddedManager

from tests.support.s3server import s3_env, s3_server  # noqa: F401 - fixtures
from tests.train.conftest import manifest, shards  # noqa: F401 - fixture / helper

pytestmark = pytest.mark.e2e


def _wait_ended(c: httpx.Client, job_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["phase"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"still {job['phase']} after {timeout_s} s: {job['message']}")
        time.sleep(0.2)


def test_a_missing_checkpoint_bucket_fails_the_job_after_one_attempt(tmp_path, shards, s3_env):  # noqa: F811
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    path = manifest(tmp_path / "job.yaml", shards, f"s3://{bucket}/ck")  # type: ignore[arg-type]
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["recovery"] = {"max_restarts": 5, "backoff_s": 0}
    with EmbeddedManager(data_dir=tmp_path / "manager", interval_s=0.2, warm_ray=False) as em:
        c = httpx.Client(base_url=em.url, headers={"Authorization": f"Bearer {em.token}"}, timeout=10)
        job_id = c.post("/v1/jobs", content=yaml.safe_dump(doc)).json()["id"]
        job = _wait_ended(c, job_id, 120)
        events = c.get(f"/v1/jobs/{job_id}/events").json()["events"]
    assert job["phase"] == "FAILED" and job["restarts_used"] == 0, job["message"]
    [attempt] = job["attempts"]
    assert attempt["exit_code"] == ExitCode.STORAGE_ERROR and attempt["end_reason"] == EndReason.STORAGE_ERROR.value
    assert attempt["startup_phase"] == "checking checkpoints", "it failed before starting Ray"
    reported = [e["message"] for e in events if e["type"] == "reported"]
    assert len(reported) == 1 and f"bucket '{bucket}' does not exist" in reported[0], reported
    assert "storage_error" in job["message"] and "retrying cannot help" in job["message"]
    assert f"bucket '{bucket}' does not exist" in job["message"]  # the policy got the trainer's final word
