"""End to end with the real trainer (`python -m orchestrator.train`: Ray + DeepSpeed on CPU).

The manager runs as its own process (uvicorn on 127.0.0.1) with the local backend. Every job
prepares its shards itself (data.prepare with a small text file) on first use; a tiny BERT,
seq_len 32, a few steps.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.manager.procs import ADMIN, ServerProcess, free_port, group_alive, terminal

pytestmark = pytest.mark.e2e

WORDS = ("the quick brown fox jumps over a lazy dog while many small birds sing in tall green trees "
         "near quiet rivers and old stone bridges under grey skies").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e-data")
    rng = random.Random(7)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "." for _ in range(1500)]
    (root / "corpus.txt").write_text("\n".join(" ".join(sentences[i:i + 5]) for i in range(0, 1500, 5)) + "\n")
    return root


def manifest(corpus: Path, tmp: Path, name: str, max_steps: int, every: int) -> str:
    return yaml.safe_dump({
        "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": name},
        "spec": {
            "model": {"preset": "bert-tiny"}, "tokenizer": {"vocab_size": 200},
            "data": {"shards": str(corpus / "shards"), "seq_len": 32, "nsp": False,
                     "prepare": {"inputs": [str(corpus / "corpus.txt")]}},
            "training": {"max_steps": max_steps, "global_batch_size": 4, "micro_batch_size": 4},
            "deepspeed": {"zero_stage": 0},
            "checkpoint": {"uri": str(tmp / "ckpt"), "every_steps": every, "preemption_deadline_s": 20},
            "recovery": {"max_restarts": 2, "backoff_s": 0, "heartbeat_timeout_s": 180},
        }})


@pytest.fixture
def server(tmp_path):
    srv = ServerProcess(tmp_path / "data", free_port()).start()
    yield srv
    srv.stop()
    # A graceful stop with no active job releases the warm Ray head (it once outlived every server).
    assert not (tmp_path / "data" / "ray" / "cluster.json").exists(), "the local Ray head outlived the server"


def submit(srv: ServerProcess, body: str) -> str:
    r = srv.http.post("/v1/jobs", content=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_kill9_of_the_trainer_group_resumes_from_the_newest_checkpoint(server, corpus, tmp_path):
    """A SIGKILL of attempt 1's whole process group: attempt 2 resumes from the newest commit and
    the job succeeds with its checkpoints, events and metrics (one job serves both checks: every
    real attempt costs CI about 30 s)."""
    job_id = submit(server, manifest(corpus, tmp_path, "e2e-kill", max_steps=12, every=3))
    server.wait(job_id, lambda j: (j["checkpoint"] or {}).get("step", 0) >= 3 and j["step"] >= 4, 240)
    pgid = int((server.data_dir / "jobs" / job_id / "attempt-1" / "pid").read_text())
    os.killpg(pgid, signal.SIGKILL)
    server.wait(job_id, lambda j: j["current_attempt"] == 2, 120)
    # attempt 1 is fenced (all of its session gone) before attempt 2 exists: what is committed now is its last word
    newest_at_kill = max(int(p.parent.name.split("-")[1]) for p in (tmp_path / "ckpt").glob("step-*/manifest.json"))
    job = server.wait(job_id, terminal, 240)
    assert job["phase"] == "SUCCEEDED", job["message"]
    a1, a2 = job["attempts"]
    assert a1["end_reason"] == "worker_lost"
    assert a2["resumed_from_step"] == newest_at_kill >= 3, "attempt 2 resumed from the newest checkpoint"
    assert a2["first_step"] == a2["resumed_from_step"] + 1 and job["step"] == 12
    # its last heartbeats may not have reached the manager: its newest commit proves how far it got
    assert a1["last_step"] >= newest_at_kill and a1["steps_lost"] == a1["last_step"] - newest_at_kill
    msgs = [e["message"] for e in server.events(job_id)]
    assert any("attempt 1 ended: worker_lost" in m for m in msgs)
    assert any(f"resumed from step {newest_at_kill}" in m for m in msgs)
    assert not group_alive(pgid)
    _succeeded_with_checkpoints_events_metrics(server, job_id, job)
    _audit_passes_then_names_a_tampered_step(server, job_id)


def _succeeded_with_checkpoints_events_metrics(server, job_id: str, job: dict) -> None:
    assert job["checkpoint"]["step"] == 12 and job["checkpoints"] >= 2
    assert job["metrics"]["loss"] > 0 and job["goodput"]["productive_fraction"] > 0
    types = [e["type"] for e in server.events(job_id)]
    assert types[:3] == ["submitted", "launching", "launched"] and types[-1] == "succeeded"
    assert "running" in types and "checkpoint" in types
    metrics = server.http.get("/metrics").text
    assert f'bertctl_job_step{{job="{job_id}"}} 12.0' in metrics
    assert 'bertctl_jobs{phase="SUCCEEDED"} 1.0' in metrics


def _bertctl_audit(server, job_id: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BERTCTL_TOKEN": ADMIN}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "audit", job_id, "--url", server.url],
                          env=env, capture_output=True, text=True, timeout=120)


def _audit_passes_then_names_a_tampered_step(server, job_id: str) -> None:
    """`bertctl audit` over a preempted run: the data ledger from both attempts matches the plan;
    one value changed in the manager's database is named by its step."""
    ok = _bertctl_audit(server, job_id)
    assert ok.returncode == 0 and "every step consumed exactly its planned samples, across 2 attempt(s)" in ok.stdout
    with sqlite3.connect(server.data_dir / "manager.db") as db:
        step = db.execute("SELECT max(step) FROM metric_points WHERE job_id = ? AND attempt = 2 "
                          "AND sample_digest IS NOT NULL", (job_id,)).fetchone()[0]
        db.execute("UPDATE metric_points SET sample_digest = '0000000000000000' WHERE job_id = ? AND step = ?",
                   (job_id, step))
    tampered = _bertctl_audit(server, job_id)
    assert tampered.returncode == 1 and f"step {step} (attempt 2) did not consume its planned samples" in tampered.stdout


def test_manager_kill9_mid_run_then_restart(tmp_path, corpus):
    data, port = tmp_path / "data", free_port()
    first = ServerProcess(data, port).start()
    second = None
    try:
        job_id = submit(first, manifest(corpus, tmp_path, "e2e-mgr", max_steps=10, every=3))
        first.wait(job_id, lambda j: j["step"] >= 2, 240)
        before = first.events(job_id)
        first.kill9()
        time.sleep(2)
        second = ServerProcess(data, port).start()
        job = second.wait(job_id, terminal, 240)
        assert job["phase"] == "SUCCEEDED", job["message"]
        after = second.events(job_id)
        assert after[:len(before)] == before
        assert [e["type"] for e in after].count("launching") == 1 and len(job["attempts"]) == 1
        assert job["attempts"][0]["exit_code"] == 0 and job["step"] == 10
    finally:
        if second:
            second.stop()
        first.stop()
