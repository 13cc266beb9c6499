"""`bertctl run` goes through an embedded job manager: the store records the job, its attempts and
events; a lost attempt is retried; a failure is reported; Ctrl-C cancels and leaves nothing running.

The trainer here is the manager tests' contract-speaking fake (BERTCTL_TRAINER_COMMAND), so these
run in seconds; tests/train/test_cli.py runs the real trainer the same way.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.manager.backends.processes import alive
from orchestrator.manager.store import Store
from tests.manager.conftest import FAKE_TRAINER
from tests.train.conftest import build_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def _manifest(tmp_path: Path, shards: Path, steps: int = 12, labels: dict[str, str] | None = None) -> Path:
    doc = {"apiVersion": "bertctl/v1", "kind": "PretrainJob",
           "metadata": {"name": "cli-run", "labels": labels or {}},
           "spec": {"model": {"preset": "bert-tiny"}, "tokenizer": {"vocab_size": 1000},
                    "data": {"shards": str(shards), "seq_len": 64, "nsp": True},
                    "training": {"max_steps": steps, "global_batch_size": 4, "micro_batch_size": 4},
                    "checkpoint": {"uri": str(tmp_path / "ckpt"), "every_steps": 4, "preemption_deadline_s": 2.0},
                    "recovery": {"max_restarts": 2, "backoff_s": 0.0, "max_backoff_s": 1.0}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTCTL_")}
    env["BERTCTL_TRAINER_COMMAND"] = shlex.join(FAKE_TRAINER)
    return env


def _run(tmp_path: Path, manifest: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(manifest), "--no-export",
                           "--data-dir", str(tmp_path / "bertctl"), *extra], env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)


def _stored(tmp_path: Path) -> tuple[dict, list[dict], list[dict]]:
    store = Store(f"sqlite:///{tmp_path / 'bertctl' / 'manager.db'}")
    try:
        (job,) = store.list_jobs()
        return job, store.attempts(job["id"]), store.events(job["id"])
    finally:
        store.close()


def test_run_goes_through_the_manager_and_records_the_job(tmp_path, shards):
    out = _run(tmp_path, _manifest(tmp_path, shards))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    job, attempts, events = _stored(tmp_path)
    assert job["phase"] == "SUCCEEDED" and job["step"] == 12 and job["backend"] == "local"
    assert [a["number"] for a in attempts] == [1] and attempts[0]["end_reason"] == "succeeded"
    types = [e["type"] for e in events]
    assert "submitted" in types and "succeeded" in types
    log = tmp_path / "bertctl" / "jobs" / job["id"] / "attempt-1" / "trainer.log"
    assert "done" in log.read_text()
    assert str(log.parent.parent) in out.stdout.replace("\n", "")  # it says where the logs are
    assert "12/12" in out.stdout and "1 attempt(s)" in out.stdout


def test_a_lost_attempt_is_retried_from_the_newest_checkpoint(tmp_path, shards):
    out = _run(tmp_path, _manifest(tmp_path, shards, labels={"fake-exit-at": "6:137"}))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    job, attempts, _ = _stored(tmp_path)
    assert job["phase"] == "SUCCEEDED" and job["restarts_used"] == 1
    assert [(a["number"], a["end_reason"]) for a in attempts] == [(1, "worker_lost"), (2, "succeeded")]
    assert attempts[1]["resumed_from_step"] == 4  # the newest checkpoint when attempt 1 died at step 6
    assert "attempt 1 ended: worker_lost" in out.stdout and "1 restart(s)" in out.stdout


def test_a_failed_job_prints_the_reason_and_exits_non_zero(tmp_path, shards):
    out = _run(tmp_path, _manifest(tmp_path, shards, labels={"fake-exit-at": "3:65"}))
    assert out.returncode == 65, out.stdout[-3000:] + out.stderr[-3000:]
    job, attempts, _ = _stored(tmp_path)
    assert job["phase"] == "FAILED" and len(attempts) == 1 and attempts[0]["end_reason"] == "data_error"
    assert "training failed" in out.stderr and "data_error" in out.stderr
    assert "exiting with code 65" in out.stderr  # the tail of the trainer's log
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_cancels_the_job_and_leaves_nothing_running(tmp_path, shards, sig):
    manifest = _manifest(tmp_path, shards, steps=100_000, labels={"fake-step-s": "0.1"})
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(manifest), "--no-export",
                             "--data-dir", str(tmp_path / "bertctl")], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jobs = tmp_path / "bertctl" / "jobs"
    try:
        deadline = time.monotonic() + 60
        while not (logs := list(jobs.glob("*/attempt-1/trainer.log"))) or "step 3 " not in logs[0].read_text():
            assert time.monotonic() < deadline and proc.poll() is None, "the trainer never got going"
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "cancelling" in err, err
    job, attempts, _ = _stored(tmp_path)
    assert job["phase"] == "CANCELLED" and attempts[-1]["end_reason"] == "cancelled"
    pid = int((jobs / job["id"] / "attempt-1" / "pid").read_text())
    assert not alive(pid)
    assert "preempted at step" in logs[0].read_text()  # it got SIGTERM and checkpointed before stopping
