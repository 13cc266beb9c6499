"""The trainer entry as the manager's local backend runs it: its own process group, its own Ray.

- a manager answering 409 fences the attempt: it stops without checkpointing, exits 69, and the
  attempt token appears in no output line (it only travels in the Authorization header);
- SIGTERM commits a checkpoint of the step in progress and exits 75; the next attempt resumes
  at the following step; SIGKILL of the process group leaves no Ray or worker process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.contract import ExitCode
from orchestrator.manager.backends.processes import members
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


def _session_pids(sid: int) -> list[int]:
    """Live members of the session (a zombie counts as gone)."""
    return members(sid)


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


def _wait_for_steps(proc: subprocess.Popen, metrics: Path, timeout: float = 240) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.exists() and read_metrics(metrics)):
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
        time.sleep(0.3)
    rows = read_metrics(metrics) if metrics.exists() else []
    assert rows, "training never started"
    return rows


def test_sigterm_commits_then_resume_continues_then_sigkill_leaves_nothing_behind(tmp_path, shards):
    job = manifest(tmp_path / "job.yaml", shards, tmp_path / "ckpt", steps=100000, every=100000)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    # 1. SIGTERM (what Kubernetes sends): finish the step, commit a checkpoint of it, exit 75.
    proc = _start(job, tmp_path / "w1", {})
    try:
        _wait_for_steps(proc, tmp_path / "w1" / "metrics.jsonl")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == ExitCode.PREEMPTED, out.decode(errors="replace")[-3000:]
    last_step = read_metrics(tmp_path / "w1" / "metrics.jsonl")[-1]["step"]
    assert [c.step for c in store.committed()] == [last_step]  # steps lost: 0

    # 2. The next attempt resumes at the step after it; then SIGKILL its whole process group.
    proc = _start(job, tmp_path / "w2", {"BERTCTL_ATTEMPT": "2"})
    try:
        rows = _wait_for_steps(proc, tmp_path / "w2" / "metrics.jsonl")
        assert rows[0]["step"] == last_step + 1
        alive = _session_pids(proc.pid)
        assert len(alive) > 3  # the driver, Ray's head processes and the training workers
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ray workers sit in their own process groups; they exit once their raylet is gone.
    deadline = time.time() + 60
    while time.time() < deadline and _session_pids(proc.pid):
        time.sleep(0.5)
    assert _session_pids(proc.pid) == []
