"""Startup liveness and fencing beside the loop, clock-free: the supervisor is stepped with
``reconcile_once(now)`` over a real store (SQLite and PostgreSQL) and a scripted backend."""

from __future__ import annotations

import threading

import pytest

from orchestrator.contract import Heartbeat
from orchestrator.manager.backends.base import AttemptStatus, LaunchRequest, RunState
from orchestrator.manager.heartbeats import Outcome, apply_heartbeat
from orchestrator.manager.supervisor import Supervisor
from orchestrator.manager.views import job_detail
from orchestrator.spec import parse_manifest

from tests.manager.conftest import make_manifest

T0 = 1_000_000.0


class ScriptedBackend:
    """Every attempt is STARTING until the test says otherwise; terminate may block on an Event."""

    name = "scripted"

    def __init__(self, store):
        self.store = store
        self.states: dict[str, AttemptStatus] = {}
        self.blockers: dict[str, threading.Event] = {}
        self.launched: list[tuple[str, int]] = []
        self.terminated: list[tuple[str, int]] = []
        self.previous_at_launch: list[str] = []

    def launch(self, request: LaunchRequest) -> str:
        if request.attempt > 1:  # the fencing invariant, seen from the backend
            self.previous_at_launch.append(self.store.attempts(request.job_id)[request.attempt - 2]["state"])
        self.launched.append((request.job_id, request.attempt))
        return f"{request.job_id}/{request.attempt}"

    def poll(self, job_id, attempt, handle) -> AttemptStatus:
        return self.states.get(job_id, AttemptStatus(RunState.STARTING))

    def terminate(self, job_id, attempt, handle, grace_s) -> None:
        if job_id in self.blockers:
            self.blockers[job_id].wait()
        self.terminated.append((job_id, attempt))

    def log_path(self, job_id, attempt, handle):
        return None


@pytest.fixture
def sup(store):
    supervisor = Supervisor(store, {"scripted": ScriptedBackend(store)}, manager_url="http://127.0.0.1:9")
    yield supervisor
    for blocker in supervisor.backends["scripted"].blockers.values():
        blocker.set()
    assert supervisor.wait_idle()


def submit(store, tmp_path, name="tiny", **recovery) -> str:
    manifest = make_manifest(tmp_path, name=name, **recovery)
    job, _ = store.create_job(parse_manifest(manifest).to_dict(), "scripted", T0)
    return job["id"]


def step(sup, now: float) -> None:
    sup.reconcile_once(now)
    assert sup.wait_idle()


def attempt(store, job_id, number=1) -> dict:
    return store.attempts(job_id)[number - 1]


def starting(store, job_id, phase: str, now: float) -> Outcome:
    return apply_heartbeat(store, job_id, Heartbeat(attempt=1, status="starting", phase=phase), now)


def test_silence_before_the_first_heartbeat_is_judged_by_the_startup_timeout(sup, store, tmp_path):
    job_id = submit(store, tmp_path, heartbeat_timeout_s=10.0, startup_timeout_s=100.0)
    step(sup, T0)
    step(sup, T0 + 2 * 10.0 + 1)  # twice heartbeat_timeout_s, nothing heard yet: still starting up
    assert attempt(store, job_id)["state"] == "running" and sup.backends["scripted"].terminated == []
    step(sup, T0 + 101)
    a1 = attempt(store, job_id)
    assert a1["state"] == "ended" and a1["end_reason"] == "infrastructure"
    assert "not training 100s after it started" in a1["message"] and "none reported" in a1["message"]
    assert "startup_timeout_s" in a1["message"]
    assert store.get_job(job_id)["phase"] == "RECOVERING"


def test_past_the_startup_timeout_the_last_phase_is_named(sup, store, tmp_path):
    job_id = submit(store, tmp_path, heartbeat_timeout_s=10.0, startup_timeout_s=100.0)
    step(sup, T0)
    assert starting(store, job_id, "joining Ray", T0 + 5) is Outcome.OK
    assert starting(store, job_id, "waiting for 2 worker(s)", T0 + 60) is Outcome.OK
    step(sup, T0 + 99)  # starting heartbeats are liveness within the deadline, they do not extend it
    assert attempt(store, job_id)["state"] == "running"
    step(sup, T0 + 101)
    a1 = attempt(store, job_id)
    assert a1["end_reason"] == "infrastructure" and "last startup phase: waiting for 2 worker(s)" in a1["message"]
    ended = [e for e in store.events(job_id) if e["type"] == "attempt_ended"]
    assert "waiting for 2 worker(s)" in ended[0]["message"]


def test_a_starting_heartbeat_is_neither_progress_nor_running(sup, store, tmp_path):
    job_id = submit(store, tmp_path)
    step(sup, T0)
    starting(store, job_id, "loading checkpoint step 40", T0 + 1)
    starting(store, job_id, "loading checkpoint step 40", T0 + 2)  # repeated: no second event
    job = store.get_job(job_id)
    a1 = attempt(store, job_id)
    assert job["phase"] == "LAUNCHING" and job["step"] == 0
    assert a1["first_step_at"] is None and a1["recovery_s"] is None and a1["heartbeats"] == 2
    assert a1["last_heartbeat_at"] == T0 + 2 and a1["startup_phase"] == "loading checkpoint step 40"
    started = [e for e in store.events(job_id) if e["type"] == "starting"]
    assert [e["data"]["phase"] for e in started] == ["loading checkpoint step 40"]
    view = job_detail(store, job, T0 + 3)
    assert view["startup_phase"] == "loading checkpoint step 40"
    assert view["attempts"][0]["startup_phase"] == "loading checkpoint step 40"
    apply_heartbeat(store, job_id, Heartbeat(attempt=1, step=1, resumed_from_step=0), T0 + 4)
    job = store.get_job(job_id)
    assert job["phase"] == "RUNNING" and job_detail(store, job, T0 + 5)["startup_phase"] is None
    assert attempt(store, job_id)["first_step_at"] == T0 + 4


def test_after_the_first_training_heartbeat_silence_is_judged_by_heartbeat_timeout(sup, store, tmp_path):
    job_id = submit(store, tmp_path, heartbeat_timeout_s=10.0, startup_timeout_s=100.0)
    step(sup, T0)
    apply_heartbeat(store, job_id, Heartbeat(attempt=1, step=1), T0 + 20)
    sup.backends["scripted"].states[job_id] = AttemptStatus(RunState.RUNNING)
    step(sup, T0 + 29)
    assert attempt(store, job_id)["state"] == "running"
    step(sup, T0 + 31)
    a1 = attempt(store, job_id)
    assert a1["end_reason"] == "heartbeat_timeout" and "no heartbeat for 10s" in a1["message"]


def test_adoption_restarts_the_startup_clock(store, tmp_path):
    first = Supervisor(store, {"scripted": ScriptedBackend(store)}, manager_url="http://127.0.0.1:9")
    job_id = submit(store, tmp_path, startup_timeout_s=100.0)
    step(first, T0)
    second = Supervisor(store, {"scripted": ScriptedBackend(store)}, manager_url="http://127.0.0.1:9")
    second.adopt(T0 + 90)
    step(second, T0 + 150)
    assert attempt(store, job_id)["state"] == "running"
    step(second, T0 + 191)
    assert attempt(store, job_id)["end_reason"] == "infrastructure"


def test_a_terminate_that_blocks_does_not_delay_another_jobs_launch(sup, store, tmp_path):
    backend = sup.backends["scripted"]
    slow = submit(store, tmp_path, name="slow")
    step(sup, T0)
    backend.states[slow] = AttemptStatus(RunState.EXITED, exit_code=69)  # retried: INFRASTRUCTURE
    backend.blockers[slow] = threading.Event()
    other = submit(store, tmp_path, name="other")
    sup.reconcile_once(T0 + 1)  # returns while the slow job's pods still drain
    assert sup.wait_idle(jobs=[other])
    assert attempt(store, other)["state"] == "running" and (other, 1) in backend.launched
    assert attempt(store, slow)["state"] == "running", "not recorded ENDED before it was confirmed gone"
    sup.reconcile_once(T0 + 2)  # the slow job is skipped, never relaunched meanwhile
    assert [a for j, a in backend.launched if j == slow] == [1]
    backend.blockers[slow].set()
    assert sup.wait_idle()
    assert attempt(store, slow)["state"] == "ended" and store.get_job(slow)["phase"] == "RECOVERING"
    step(sup, T0 + 3)
    assert [a for j, a in backend.launched if j == slow] == [1, 2]
    assert backend.previous_at_launch == ["ended"]


@pytest.mark.parametrize("bad", [0, -5, "soon"])
def test_startup_timeout_is_validated_like_every_recovery_field(tmp_path, bad):
    from orchestrator.errors import ManifestError

    with pytest.raises(ManifestError, match="startup_timeout_s"):
        parse_manifest(make_manifest(tmp_path, startup_timeout_s=bad))
    assert parse_manifest(make_manifest(tmp_path)).spec.recovery.startup_timeout_s == 1800.0
