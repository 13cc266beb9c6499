"""Through the embedded manager (loopback HTTP, SQLite, local backend running the real trainer).

- SIGTERM to the trainer mid-run (what Kubernetes sends a preempted pod), checkpoints on S3 with
  async upload: the preemption checkpoint commits inside the notice, steps lost = 0, attempt 2
  starts at the step after the preemption, the job ends at exactly max_steps.
- One byte flipped in the newest checkpoint: detected, skipped, a checkpoint_skipped event names
  it and why, and the previous checkpoint is used.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml

from orchestrator.manager.embedded import EmbeddedManager
from orchestrator.train.checkpoint import CheckpointStore
from tests.chaos.conftest import attempt, cmdline, descendants, job

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def manager(tmp_path_factory, s3_proxy):
    with EmbeddedManager(data_dir=tmp_path_factory.mktemp("mgr"), interval_s=0.2) as em:
        em.http = httpx.Client(base_url=em.url, headers={"Authorization": f"Bearer {em.token}"}, timeout=30)
        yield em


def _submit(em, manifest_path: Path) -> str:
    doc = yaml.safe_load(manifest_path.read_text())
    doc["spec"]["recovery"] = {"max_restarts": 2, "backoff_s": 0, "heartbeat_timeout_s": 240}
    r = em.http.post("/v1/jobs", content=yaml.safe_dump(doc))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _wait(em, job_id: str, until, timeout_s: float = 400) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        j = em.http.get(f"/v1/jobs/{job_id}").json()
        if until(j):
            return j
        assert j["phase"] not in ("FAILED", "CANCELLED") and time.monotonic() < deadline, j
        time.sleep(0.2)


def _events(em, job_id: str) -> list[dict]:
    return em.http.get(f"/v1/jobs/{job_id}/events").json()["events"]


def _trainer_pid(em, job_id: str, n: int) -> int:
    wrapper = int((em.data_dir / "jobs" / job_id / f"attempt-{n}" / "pid").read_text())
    return next(p for p in descendants(wrapper) if "orchestrator.train" in cmdline(p)
                and "local_wrapper" not in cmdline(p))


def test_sigterm_loses_no_step_and_resumes_at_the_next(manager, tmp_path, shards, bucket):
    steps = 40
    m = job(tmp_path / "job.yaml", shards, f"s3://{bucket}/pre", async_upload=True, steps=steps, every=20,
            deadline=20)
    job_id = _submit(manager, m)
    j = _wait(manager, job_id, lambda j: j["step"] >= 5)
    os.kill(_trainer_pid(manager, job_id, 1), signal.SIGTERM)
    j = _wait(manager, job_id, lambda j: j["phase"] == "SUCCEEDED")
    a1, a2 = j["attempts"]
    assert a1["end_reason"] == "preempted" and a1["exit_code"] == 75
    assert a1["steps_lost"] == 0 and j["goodput"]["steps_lost"] == 0
    assert a2["resumed_from_step"] == a1["last_step"] >= 5, "the preemption checkpoint is of the last step"
    assert a2["first_step"] == a2["resumed_from_step"] + 1
    assert j["step"] == steps and j["checkpoint"]["step"] == steps
    committed = [c.step for c in CheckpointStore(f"s3://{bucket}/pre").committed()]
    assert a1["last_step"] in committed and committed[0] == steps
    assert any(f"resumed from step {a1['last_step']}" in e["message"] for e in _events(manager, job_id))


def test_flipped_byte_is_skipped_with_an_event(manager, tmp_path, shards, ray_cluster, monkeypatch):
    ckpt = tmp_path / "ckpt"
    first = job(tmp_path / "first.yaml", shards, str(ckpt), steps=8, every=4)
    assert attempt(first, tmp_path, 1, monkeypatch)[0] == 0
    newest = CheckpointStore(str(ckpt)).committed()[0]
    assert newest.step == 8
    victim = max((e for e in newest.files if "/ds/" in e.path), key=lambda e: e.size)
    path = ckpt / "step-00000008" / victim.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    job_id = _submit(manager, job(tmp_path / "second.yaml", shards, str(ckpt), steps=12, every=4))
    j = _wait(manager, job_id, lambda j: j["phase"] == "SUCCEEDED")
    (a1,) = j["attempts"]
    assert a1["resumed_from_step"] == 4 and a1["first_step"] == 5 and j["step"] == 12
    skipped = [e for e in _events(manager, job_id) if e["type"] == "checkpoint_skipped"]
    assert len(skipped) == 1 and skipped[0]["data"]["step"] == 8
    assert victim.path in skipped[0]["message"] and "sha256" in skipped[0]["message"]
