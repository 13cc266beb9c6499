"""A KubeRay attempt starting up, seen through the supervisor over a real store (SQLite and
PostgreSQL) and the fake API server: what the cluster makes it wait for becomes its startup
phase, one 'starting' event per change; an image that stays unpullable fails the job. Clock-free:
the supervisor is stepped with ``reconcile_once(now)`` and the backend reads the same clock."""

from __future__ import annotations

import pytest

from orchestrator.manager.backends.kuberay import KubeRayBackend
from orchestrator.manager.supervisor import Supervisor
from orchestrator.manager.views import job_detail
from orchestrator.spec import parse_manifest
from tests.k8s.cluster_sim import pull_fails, start_cluster, workers_unschedulable
from tests.k8s.conftest import manifest
from tests.manager.conftest import pg_schema, store  # noqa: F401 - the real stores, as fixtures

T0 = 1_000_000.0
NO_GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


@pytest.fixture
def clock():
    return [T0]


@pytest.fixture
def sup(store, api_client, clock):  # noqa: F811 - the imported fixture
    backend = KubeRayBackend(api_client=api_client, poll_interval_s=0.0, delete_timeout_s=5.0,
                             sleep=lambda s: None, image_pull_grace_s=120.0, clock=lambda: clock[0])
    supervisor = Supervisor(store, {"kuberay": backend}, manager_url="http://bertctl-manager.bertctl.svc:8470")
    yield supervisor
    assert supervisor.wait_idle()


def submit(store, **recovery) -> str:  # noqa: F811
    m = manifest()
    m["spec"]["recovery"] = {"max_restarts": 3, "backoff_s": 0.0, **recovery}
    job, _ = store.create_job(parse_manifest(m).to_dict(), "kuberay", T0)
    return job["id"]


def step(sup, clock, now: float) -> None:
    clock[0] = now
    sup.reconcile_once(now)
    assert sup.wait_idle()


def starting_events(store, job_id) -> list[str]:  # noqa: F811
    return [e["message"] for e in store.events(job_id) if e["type"] == "starting"]


def test_pods_pending_for_capacity_become_the_startup_phase(sup, store, kube, clock):  # noqa: F811
    job_id = submit(store, heartbeat_timeout_s=60.0, startup_timeout_s=900.0)
    step(sup, clock, T0)                                    # launches attempt 1: RayJob job-…-a1
    rayjob = store.attempts(job_id)[0]["handle"].split("/")[1]
    step(sup, clock, T0 + 1)
    assert starting_events(store, job_id) == ["attempt 1: RayJob submitted: starting the Ray cluster"]
    workers_unschedulable(kube, rayjob, NO_GPU)
    for t in (T0 + 5, T0 + 10, T0 + 130):                      # the same reason again: no new event
        step(sup, clock, t)
    waiting = f"2 pod(s) waiting for a node (Unschedulable): {NO_GPU}"
    assert starting_events(store, job_id)[1:] == [f"attempt 1: {waiting}"]
    job = store.get_job(job_id)
    assert job["phase"] == "LAUNCHING" and job_detail(store, job, T0 + 130)["startup_phase"] == waiting
    # Twice heartbeat_timeout_s of silence while the autoscaler adds nodes: not killed.
    assert store.attempts(job_id)[0]["state"] == "running"
    start_cluster(kube, rayjob)                             # nodes joined: the RayJob runs
    step(sup, clock, T0 + 300)
    assert len(starting_events(store, job_id)) == 2 and store.attempts(job_id)[0]["state"] == "running"


def test_past_the_startup_timeout_the_schedulers_reason_is_named(sup, store, kube, clock):  # noqa: F811
    job_id = submit(store, startup_timeout_s=300.0)
    step(sup, clock, T0)
    workers_unschedulable(kube, store.attempts(job_id)[0]["handle"].split("/")[1], NO_GPU)
    step(sup, clock, T0 + 10)
    step(sup, clock, T0 + 301)
    a1 = store.attempts(job_id)[0]
    assert a1["state"] == "ended" and a1["end_reason"] == "infrastructure"
    assert "Insufficient nvidia.com/gpu" in a1["message"]


def test_an_image_pull_error_within_the_grace_is_a_startup_phase_then_fails_the_job(sup, store, kube, clock):  # noqa: F811
    job_id = submit(store, startup_timeout_s=900.0)
    step(sup, clock, T0)
    rayjob = store.attempts(job_id)[0]["handle"].split("/")[1]
    start_cluster(kube, rayjob)
    kube.get("/apis/ray.io/v1/namespaces/train/rayjobs", rayjob)["status"] = {"jobDeploymentStatus": "Initializing"}
    pull_fails(kube, f"{rayjob}-raycluster-gpu-workers-worker-1", "ErrImagePull")
    step(sup, clock, T0 + 10)                               # first seen: the grace starts
    step(sup, clock, T0 + 129)                              # 119 s later: still starting
    assert store.attempts(job_id)[0]["state"] == "running"
    assert "pulling image registry.example/bertctl:1 failed (ErrImagePull" in starting_events(store, job_id)[-1]
    step(sup, clock, T0 + 130)
    a1 = store.attempts(job_id)[0]
    assert a1["state"] == "ended" and a1["end_reason"] == "image_pull"
    assert "cannot pull image registry.example/bertctl:1 for 120s" in a1["message"]
    job = store.get_job(job_id)
    assert job["phase"] == "FAILED" and len(store.attempts(job_id)) == 1  # never retried
    assert kube.names("/apis/ray.io/v1/namespaces/train/rayjobs") == []  # and fenced
