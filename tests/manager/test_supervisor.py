"""Supervisor + local backend with a fake trainer over real HTTP, stepping reconcile_once."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from orchestrator.errors import PermanentError
from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.server import Manager, ManagerConfig, ServerThread

from tests.manager.conftest import FAKE_TRAINER, make_manifest
from tests.manager.procs import group_alive

ADMIN = "admin-" + "b" * 40


def start_manager(data_dir: Path, port: int = 0) -> ServerThread:
    cfg = ManagerConfig(port=port, data_dir=data_dir, admin_token=ADMIN, trainer_command=FAKE_TRAINER,
                        stall_grace_s=2.0, cancel_grace_s=10.0)
    return ServerThread(Manager(cfg), supervise=False).start()


@pytest.fixture
def mgr(tmp_path):
    thread = start_manager(tmp_path / "data")
    yield thread.manager
    _kill_all(thread.manager)
    thread.stop()


def _kill_all(manager: Manager) -> None:
    for job, att in manager.store.active_jobs():
        if att and att["handle"]:
            manager.backends["local"].terminate(job["id"], att["number"], att["handle"], 0.0)


def submit(manager: Manager, manifest) -> str:
    from orchestrator.spec import parse_manifest
    job, _ = manager.store.create_job(parse_manifest(manifest).to_dict(), "local", time.time())
    return job["id"]


def drive(manager: Manager, job_id: str, until, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        manager.supervisor.reconcile_once()
        job = manager.store.get_job(job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"timed out in phase {job['phase']}: {manager.store.events(job_id)}"
        time.sleep(0.1)


def terminal(job) -> bool:
    return job["phase"] in ("SUCCEEDED", "FAILED", "CANCELLED")


def events(manager, job_id):
    return [e["type"] for e in manager.store.events(job_id)]


def test_job_succeeds_with_checkpoints_events_and_logs(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=12, every=4))
    job = drive(mgr, job_id, terminal)
    assert job["phase"] == "SUCCEEDED" and job["step"] == 12
    assert [c["step"] for c in mgr.store.checkpoints(job_id)] == [4, 8, 12]
    ev = events(mgr, job_id)
    assert ev[:3] == ["submitted", "launching", "launched"] and ev[-2:] == ["attempt_ended", "succeeded"]
    assert "reported" in ev
    log = Path(mgr.store.attempts(job_id)[0]["log_path"]).read_text()
    assert "step 12" in log and "done" in log
    assert ADMIN not in log


def test_kill9_of_the_group_is_a_lost_worker_and_attempt_2_resumes(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=30, every=5, labels={"fake-step-s": "0.1"}))
    drive(mgr, job_id, lambda j: j["step"] >= 12)
    att = mgr.store.attempts(job_id)[0]
    os.killpg(int(att["handle"]), signal.SIGKILL)
    job = drive(mgr, job_id, terminal)
    assert job["phase"] == "SUCCEEDED"
    a1, a2 = mgr.store.attempts(job_id)
    assert a1["end_reason"] == "worker_lost" and a1["exit_code"] == 137
    assert a1["steps_lost"] == a1["last_step"] - a1["checkpoint_step_at_end"]
    assert a2["resumed_from_step"] == a1["checkpoint_step_at_end"] >= 10
    assert a2["recovery_s"] is not None
    # Attempt 2 gets the observed time between interruptions when this one lost steps (a kill right
    # at a commit lost none: then the prior applies, as before any loss).
    a2_log = Path(a2["log_path"]).read_text()
    assert "mtbp=" in a2_log and ("mtbp=None" not in a2_log) == (a1["steps_lost"] > 0)
    assert events(mgr, job_id).count("launching") == 2 and "recovering" in events(mgr, job_id)


@pytest.mark.parametrize("code,phase,attempts", [(66, "FAILED", 1), (69, "SUCCEEDED", 2), (2, "FAILED", 1)])
def test_exit_codes_follow_the_policy(mgr, tmp_path, code, phase, attempts):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=6, labels={"fake-exit-at": f"3:{code}"}))
    job = drive(mgr, job_id, terminal)
    assert job["phase"] == phase
    assert len(mgr.store.attempts(job_id)) == attempts


@pytest.mark.parametrize("said,recorded", [("node_lost", "node_lost"), ("nan_loss", "infrastructure")])
def test_the_trainers_final_word_refines_exit_69_only_to_a_reason_that_shares_it(mgr, tmp_path, said, recorded):
    """A lost node exits 69 like any temporary failure and says node_lost in its final heartbeat;
    a final word that contradicts the exit code (nan_loss is exit 67) does not override it."""
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=6, labels={"fake-exit-at": f"3:69:{said}"}))
    job = drive(mgr, job_id, terminal)
    a1 = mgr.store.attempts(job_id)[0]
    assert (a1["end_reason"], a1["exit_code"]) == (recorded, 69)
    assert job["phase"] == "SUCCEEDED", "either way a temporary failure, retried"


def test_exhausted_budget_fails(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=6, labels={"fake-exit-at": "2:69"}, max_restarts=0))
    job = drive(mgr, job_id, terminal)
    assert job["phase"] == "FAILED" and "max_restarts=0" in job["message"]


def test_stalled_attempt_is_killed_and_retried(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=8, labels={"fake-hang-at": "3"},
                                       heartbeat_timeout_s=2.0))
    job = drive(mgr, job_id, terminal)
    a1, a2 = mgr.store.attempts(job_id)
    assert a1["end_reason"] == "heartbeat_timeout" and job["phase"] == "SUCCEEDED"
    assert not group_alive(int(a1["handle"]))


def test_a_silent_startup_longer_than_heartbeat_timeout_is_not_killed(mgr, tmp_path):
    """A cloud cluster's scale-up and image pull, as the fake trainer plays it: silent before step 1."""
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=4, labels={"fake-startup-s": "4"},
                                       heartbeat_timeout_s=1.5, startup_timeout_s=60.0, max_restarts=0))
    job = drive(mgr, job_id, terminal)
    assert job["phase"] == "SUCCEEDED" and len(mgr.store.attempts(job_id)) == 1


def test_a_startup_past_startup_timeout_ends_naming_its_phase(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=4, max_restarts=0, startup_timeout_s=2.0,
                                       labels={"fake-startup-s": "600", "fake-startup-phase": "pulling the image"}))
    drive(mgr, job_id, lambda j: mgr.store.attempts(j["id"])[0]["startup_phase"] is not None)
    assert mgr.store.get_job(job_id)["phase"] == "LAUNCHING", "a starting heartbeat is not training"
    job = drive(mgr, job_id, terminal)
    a1 = mgr.store.attempts(job_id)[0]
    assert job["phase"] == "FAILED" and a1["end_reason"] == "infrastructure"
    assert "last startup phase: pulling the image" in a1["message"]
    assert "starting" in events(mgr, job_id) and not group_alive(int(a1["handle"]))


def test_cancel_while_running_stops_the_group(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=500, labels={"fake-step-s": "0.05"}))
    drive(mgr, job_id, lambda j: j["phase"] == "RUNNING")
    assert mgr.store.request_cancel(job_id, time.time()) == "RUNNING"
    job = drive(mgr, job_id, terminal)
    att = mgr.store.attempts(job_id)[0]
    assert job["phase"] == "CANCELLED" and att["end_reason"] == "cancelled"
    assert att["final_status"] == "preempted", "SIGTERM first: the trainer checkpointed before exiting"
    assert not group_alive(int(att["handle"]))


def test_cancel_while_launching(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=500))
    mgr.supervisor.reconcile_once()
    assert mgr.store.get_job(job_id)["phase"] == "LAUNCHING"
    mgr.store.request_cancel(job_id, time.time())
    job = drive(mgr, job_id, terminal)
    att = mgr.store.attempts(job_id)[0]
    assert job["phase"] == "CANCELLED" and not group_alive(int(att["handle"]))


def test_a_slow_stop_does_not_hold_up_other_jobs(mgr, tmp_path):
    stubborn = submit(mgr, make_manifest(tmp_path, name="stubborn", max_steps=10_000,
                                         labels={"fake-ignore-term": "1"}))
    drive(mgr, stubborn, lambda j: j["phase"] == "RUNNING")
    mgr.store.request_cancel(stubborn, time.time())
    mgr.supervisor.reconcile_once()  # starts stopping it: SIGTERM is ignored, SIGKILL after the grace
    other = submit(mgr, make_manifest(tmp_path, name="other", max_steps=5))
    job = drive(mgr, other, terminal)
    done = drive(mgr, stubborn, terminal)
    assert job["phase"] == "SUCCEEDED" and done["phase"] == "CANCELLED"
    # a loop blocked by the 10 s grace could not even have launched `other` before the stop ended
    assert mgr.store.attempts(other)[0]["created_at"] < done["ended_at"]
    assert "ignoring SIGTERM" in Path(mgr.store.attempts(stubborn)[0]["log_path"]).read_text()
    assert not group_alive(int(mgr.store.attempts(stubborn)[0]["handle"]))


def test_cancel_while_recovering_never_relaunches(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=6, labels={"fake-exit-at": "2:69"},
                                       backoff_s=3600.0, max_backoff_s=3600.0))
    drive(mgr, job_id, lambda j: j["phase"] == "RECOVERING")
    assert mgr.store.request_cancel(job_id, time.time()) == "CANCELLED"
    mgr.supervisor.reconcile_once(time.time() + 7200)
    assert len(mgr.store.attempts(job_id)) == 1


def test_launch_interrupted_by_a_crash_is_fenced_and_retried(mgr, tmp_path):
    job_id = submit(mgr, make_manifest(tmp_path, max_steps=4))
    # As if the manager died right after recording attempt 1 and before learning its handle.
    assert mgr.store.start_attempt(job_id, 1, hash_token(new_token()), time.time())
    job = drive(mgr, job_id, terminal)
    a1 = mgr.store.attempts(job_id)[0]
    assert a1["end_reason"] == "infrastructure" and job["phase"] == "SUCCEEDED"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_restarted_manager_readopts_a_live_attempt(tmp_path):
    port, data = _free_port(), tmp_path / "data"
    first = start_manager(data, port)
    job_id = submit(first.manager, make_manifest(tmp_path, max_steps=40, labels={"fake-step-s": "0.1"}))
    drive(first.manager, job_id, lambda j: j["step"] >= 3)
    first.stop()  # the trainer keeps running; its heartbeats fail until the new manager listens
    second = start_manager(data, port)
    try:
        second.manager.supervisor.adopt(time.time())
        job = drive(second.manager, job_id, terminal)
        assert job["phase"] == "SUCCEEDED"
        assert len(second.manager.store.attempts(job_id)) == 1, "the live attempt was adopted, not relaunched"
        assert second.manager.store.attempts(job_id)[0]["exit_code"] == 0, "learned from the exit-code file"
        assert "adopting" in events(second.manager, job_id)
    finally:
        _kill_all(second.manager)
        second.stop()


def test_restarted_manager_records_a_dead_attempt_lost(tmp_path):
    data = tmp_path / "data"
    first = start_manager(data)
    job_id = submit(first.manager, make_manifest(tmp_path, max_steps=40, labels={"fake-step-s": "0.1"}))
    drive(first.manager, job_id, lambda j: j["step"] >= 3)
    handle = first.manager.store.attempts(job_id)[0]["handle"]
    first.stop()
    os.killpg(int(handle), signal.SIGKILL)
    while group_alive(int(handle)):
        time.sleep(0.05)
    (data / "jobs" / job_id / "attempt-1" / "exit_code").unlink(missing_ok=True)
    second = start_manager(data)
    try:
        second.manager.supervisor.adopt(time.time())
        second.manager.supervisor.reconcile_once()
        assert second.manager.supervisor.wait_idle()  # the fence runs beside the loop
        a1 = second.manager.store.attempts(job_id)[0]
        assert a1["state"] == "ended" and a1["end_reason"] == "worker_lost"
        assert second.manager.store.get_job(job_id)["phase"] == "RECOVERING"
    finally:
        _kill_all(second.manager)
        second.stop()


class _Unreachable:
    """A backend whose cluster cannot be reached at all: every call fails permanently."""

    name = "unreachable"

    def __init__(self):
        self.calls: list[str] = []

    def launch(self, request):
        self.calls.append("launch")
        raise PermanentError("no Kubernetes configuration found; mount a kubeconfig or run in-cluster")

    def poll(self, job_id, attempt, handle):
        self.calls.append("poll")
        raise PermanentError("no Kubernetes configuration found")

    def terminate(self, job_id, attempt, handle, grace_s):
        self.calls.append("terminate")
        raise PermanentError("no Kubernetes configuration found")

    def log_path(self, job_id, attempt, handle):
        return None


def test_a_backend_that_cannot_fence_fails_the_job_instead_of_hanging(mgr, tmp_path):
    backend = _Unreachable()
    mgr.supervisor.backends["local"] = backend
    job_id = submit(mgr, make_manifest(tmp_path))
    job = drive(mgr, job_id, terminal, timeout_s=20)
    assert job["phase"] == "FAILED"
    assert backend.calls == ["launch", "terminate"], "one launch, one fencing try, never a second attempt"
    ended = [e for e in mgr.store.events(job_id) if e["type"] == "attempt_ended"]
    assert len(ended) == 1 and "could not confirm the attempt stopped" in ended[0]["message"]


class _RecordingBackend:
    name = "recording"

    def __init__(self):
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_graceful_stop_keeps_backend_resources_while_jobs_are_active(tmp_path):
    """The warm Ray head outlives a graceful server stop while attempts train on it (the next
    manager adopts both); with no active job, or forced (embedded), it is released."""
    thread = start_manager(tmp_path / "data")
    manager = thread.manager
    recording = manager.backends["recording"] = _RecordingBackend()
    try:
        job_id = submit(manager, make_manifest(tmp_path))
        manager.close_backends()
        assert recording.closed == 0, "an active job keeps the head"
        manager.close_backends(force=True)
        assert recording.closed == 1
        manager.store.request_cancel(job_id, time.time())
        drive(manager, job_id, terminal)
        manager.close_backends()
        assert recording.closed == 2
    finally:
        _kill_all(manager)
        thread.stop()
