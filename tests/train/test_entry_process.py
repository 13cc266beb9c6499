"""The trainer entry as the manager's local backend runs it: its own process group, its own Ray.

A manager answering 409 fences the attempt: it stops without checkpointing, exits 69, and the
attempt token appears in no output line (it only travels in the Authorization header).

The entry's other ends are checked through the manager, on the same process: SIGTERM commits the
step in progress, exits 75 and the next attempt resumes at the following step
(tests/chaos/test_manager_chaos.py); SIGKILL of the process group leaves no Ray or worker
process behind and the next attempt resumes from the newest commit (tests/manager/test_e2e_real.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.contract import ExitCode
from orchestrator.train.checkpoint import CheckpointStore
from tests.recording_server import RecordingServer
from tests.train.conftest import manifest, read_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-5ecret-never-logged"


def _start(job: Path, work: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.train", "--manifest", str(job), "--work-dir", str(work),
           "--no-prepare"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_fenced_attempt_stops_without_checkpoint_and_hides_its_token(tmp_path, shards):
    mgr = RecordingServer(status=409)
    try:
        job = manifest(tmp_path / "job.yaml", shards, tmp_path / "ckpt", steps=500, every=100)
        env = {"BERTCTL_JOB_ID": "job-fenced", "BERTCTL_ATTEMPT": "2", "BERTCTL_MANAGER_URL": mgr.url,
               "BERTCTL_ATTEMPT_TOKEN": TOKEN}
        proc = _start(job, tmp_path / "work", env)
        out, _ = proc.communicate(timeout=300)
    finally:
        mgr.close()
    text = out.decode(errors="replace")
    assert proc.returncode == ExitCode.INFRASTRUCTURE, text[-3000:]
    assert TOKEN not in text
    assert mgr.requests and all(auth == f"Bearer {TOKEN}" for _, _, auth in mgr.requests)
    assert all(path == "/v1/jobs/job-fenced/heartbeat" for path, _, _ in mgr.requests)
    final = mgr.requests[-1][1]
    assert final["status"] == "failed" and final["reason"] == "infrastructure" and final["attempt"] == 2
    assert CheckpointStore(str(tmp_path / "ckpt")).committed() == []
    rows = read_metrics(tmp_path / "work" / "metrics.jsonl") if (tmp_path / "work" / "metrics.jsonl").exists() else []
    assert not rows or rows[-1]["step"] < 100
