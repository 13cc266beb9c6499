"""kill -9 of the manager process mid-run (fake trainer): nothing lost, nothing launched twice."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.manager.conftest import FAKE_TRAINER, make_manifest
from tests.manager.procs import ServerProcess, free_port, group_alive, terminal


@pytest.mark.chaos
def test_manager_kill9_and_restart_loses_nothing(tmp_path):
    data, port = tmp_path / "data", free_port()
    first = ServerProcess(data, port, FAKE_TRAINER).start()
    second = None
    try:
        body = yaml.safe_dump(make_manifest(tmp_path, max_steps=60, every=5, labels={"fake-step-s": "0.2"}))
        job_id = first.http.post("/v1/jobs", content=body, params={"submission_id": "restart-1"}).json()["id"]
        first.wait(job_id, lambda j: j["step"] >= 8, 60)
        before = first.events(job_id)
        first.kill9()
        time.sleep(1.0)  # the trainer keeps going; its heartbeats fail meanwhile
        second = ServerProcess(data, port, FAKE_TRAINER).start()
        again = second.http.post("/v1/jobs", content=body, params={"submission_id": "restart-1"})
        assert again.status_code == 200 and again.json()["id"] == job_id
        job = second.wait(job_id, terminal, 60)
        assert job["phase"] == "SUCCEEDED" and job["step"] == 60
        after = second.events(job_id)
        assert after[:len(before)] == before, "every event from before the crash survives"
        types = [e["type"] for e in after]
        assert types.count("launching") == 1 and "adopting" in types
        assert len(job["attempts"]) == 1 and job["attempts"][0]["exit_code"] == 0
        # checkpoints committed while the manager was down are learnt from the next heartbeat
        assert job["checkpoint"]["step"] == 60 and job["checkpoints"] >= 2
        log = (data / "jobs" / job_id / "attempt-1" / "trainer.log").read_text()
        assert "manager secrets in my environment: []" in log, "the admin token never reaches a trainer"
        pgid = int((data / "jobs" / job_id / "attempt-1" / "pid").read_text())
        assert not group_alive(pgid)
    finally:
        if second:
            second.stop()
        first.stop()
