"""A highly available manager: two real `bertctl server` processes on one PostgreSQL database.

Both serve the API; one supervises. kill -9 of the supervising one: the other takes over (a new
lease epoch), adopts the running attempt of a real job through the local backend, launches nothing
twice and loses no event, while the trainer's heartbeats fail over to it. SQLite refuses a second
replica by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.contract import ENV_MANAGER_URL, ENV_MANAGER_URLS, Heartbeat
from orchestrator.train.heartbeat import HeartbeatClient, Identity

from tests.manager.conftest import make_manifest
from tests.manager.procs import free_port, group_alive
from tests.manager.replicas import Replica, fresh_database, launches, wait_for
from tests.recording_server import RecordingServer

TTL_S = 3.0


def _terminal(job: dict) -> bool:
    return job["phase"] in ("SUCCEEDED", "FAILED", "CANCELLED")


@pytest.mark.postgres
@pytest.mark.chaos
def test_kill9_of_the_supervising_replica_hands_over_without_loss(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with fresh_database() as db:
        replicas = [Replica(data, port, db, urls, lease_ttl_s=TTL_S) for port in ports]
        try:
            for r in replicas:
                r.spawn()
            for r in replicas:
                r.wait_serving()
            leader = wait_for(lambda: next((r for r in replicas if r.supervising()), None), 30, what="a supervisor")
            standby = next(r for r in replicas if r is not leader)
            epoch = leader.health()["lease_epoch"]
            assert not standby.supervising() and standby.health()["status"] == "ok"
            manifest = make_manifest(tmp_path, max_steps=140, every=10, labels={"fake-step-s": "0.1"})
            ckpt = Path(manifest["spec"]["checkpoint"]["uri"])
            # submitted through the standby: every replica serves the API
            job_id = standby.http.post("/v1/jobs", content=yaml.safe_dump(manifest)).json()["id"]
            wait_for(lambda: leader.http.get(f"/v1/jobs/{job_id}").json()["step"] >= 15, 60, what="training")
            before = standby.http.get(f"/v1/jobs/{job_id}/events").json()["events"]
            leader.kill9()
            wait_for(standby.supervising, 30, what="the standby to take over")
            assert standby.health()["lease_epoch"] > epoch
            job = wait_for(lambda: (lambda j: _terminal(j) and j)(standby.http.get(f"/v1/jobs/{job_id}").json()),
                           90, poll_s=0.5, what="the job to end")
            after = standby.http.get(f"/v1/jobs/{job_id}/events").json()["events"]
        finally:
            for r in replicas:
                r.close()
    assert job["phase"] == "SUCCEEDED" and job["step"] == 140, "heartbeats reached the survivor to the end"
    assert len(job["attempts"]) == 1 and job["attempts"][0]["exit_code"] == 0
    assert launches(ckpt) == [(1, launches(ckpt)[0][1])], "one trainer process: adopted, never launched twice"
    assert after[:len(before)] == before, "every event from before the kill survives"
    types = [e["type"] for e in after]
    assert types.count("launching") == 1 and types.count("launched") == 1
    adopted = [e for e in after[len(before):] if e["type"] == "adopting"]
    assert adopted and f"lease epoch {epoch + 1}" in adopted[0]["message"]
    assert not group_alive(int((data / "jobs" / job_id / "attempt-1" / "pid").read_text()))


def test_sqlite_refuses_a_second_replica_by_name(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ports = [free_port(), free_port()]
    first = Replica(data, ports[0], None, [], lease_ttl_s=2.0).spawn().wait_serving()
    second = Replica(data, ports[1], None, [], lease_ttl_s=2.0)
    try:
        assert wait_for(first.supervising, 30, what="the first replica to supervise")
        second.spawn()
        assert second.proc.wait(60) == 2
        log = second.log.read_text()
        assert "SQLite serves one manager replica" in log and "PostgreSQL" in log and "Traceback" not in log
        assert first.supervising(), "the first manager is not disturbed"
    finally:
        second.close()
        first.close()


def test_the_heartbeat_client_fails_over_to_the_next_replica():
    live = RecordingServer()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there (a replica killed with -9)
    live_url = live.url
    try:
        identity = Identity.from_env("job-x", {ENV_MANAGER_URL: dead, ENV_MANAGER_URLS: f"{dead}/,{live_url}",
                                               "BERTCTL_ATTEMPT": "1", "BERTCTL_ATTEMPT_TOKEN": "t"})
        assert identity.manager_url == f"{dead},{live_url}"
        client = HeartbeatClient(identity, timeout_s=1.0)
        assert client.send_final(Heartbeat(attempt=1, step=3))
        assert live.requests[-1][1]["step"] == 3 and client.url.startswith(live_url), "the live replica is kept"
    finally:
        live.close()
