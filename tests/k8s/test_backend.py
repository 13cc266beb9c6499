"""The KubeRay backend against an HTTP-level fake of the Kubernetes API server on 127.0.0.1.

The official client talks real HTTP to the fake; each test asserts the exact request sequence
of one lifecycle step, and what the supervisor's policy would decide from the reason found.
"""

from __future__ import annotations

import base64
import json

import pytest

from orchestrator.contract import EndReason, ExitCode, reason_for_exit
from orchestrator.errors import PermanentError
from orchestrator.manager.backends.base import LaunchRequest, RunState, get_backend
from orchestrator.manager.backends.kuberay import KubeRayBackend
from orchestrator.manager.policy import Action, decide_attempt_end
from tests.k8s.cluster_sim import add_event, node, pull_fails, set_status, start_cluster
from tests.k8s.conftest import CONFIGMAPS, EVENTS, NODES, PODS, RAYJOBS, SECRETS, manifest

TOKEN = "attempt-token-Zq8x1-very-secret"
JOB = "job-1"
SEL = "labelSelector=bertctl.dev/job-id=job-1"
# What the supervisor's policy (orchestrator.manager.policy) does with each reason, per DESIGN.md.
RETRIED = {EndReason.PREEMPTED, EndReason.NODE_LOST, EndReason.WORKER_LOST,
           EndReason.HEARTBEAT_TIMEOUT, EndReason.INFRASTRUCTURE}


def request(attempt: int, **kubernetes) -> LaunchRequest:
    return LaunchRequest(job_id=JOB, attempt=attempt, manifest=manifest(**kubernetes),
                         manager_url="http://bertctl-manager.bertctl.svc:8470", attempt_token=f"{TOKEN}-{attempt}")


def launch_requests(attempt: int) -> list[str]:
    return [f"GET {RAYJOBS}?{SEL}", f"POST {SECRETS}", f"POST {CONFIGMAPS}", f"POST {RAYJOBS}"]


def delete_requests(attempt: int) -> list[str]:
    name = f"{JOB}-a{attempt}"
    return [f"DELETE {RAYJOBS}/{name}?propagationPolicy=Foreground",
            f"GET {RAYJOBS}/{name}",          # still there, deletionTimestamp set
            f"GET {RAYJOBS}/{name}",          # 404: gone
            f"GET {PODS}?{SEL},bertctl.dev/attempt={attempt}",  # and so are its pods
            f"DELETE {SECRETS}/{name}-token",
            f"DELETE {CONFIGMAPS}/{name}-manifest"]


def poll_requests(attempt: int, nodes: list[str], events: bool = False) -> list[str]:
    out = [f"GET {RAYJOBS}/{JOB}-a{attempt}", f"GET {PODS}?{SEL},bertctl.dev/attempt={attempt}"]
    out += [f"GET {NODES}/{n}" for n in nodes]
    return out + ([f"GET {EVENTS}"] if events else [])


def test_registered_under_its_name():
    assert isinstance(get_backend("kuberay", api_client=object()), KubeRayBackend)


def test_launch_creates_secret_configmap_rayjob_in_order(kube, backend):
    handle = backend.launch(request(1))
    assert handle == "train/job-1-a1"
    assert kube.take_requests() == launch_requests(1)
    secret = kube.get(SECRETS, "job-1-a1-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == f"{TOKEN}-1"
    rayjob = kube.get(RAYJOBS, "job-1-a1")
    assert rayjob["spec"]["backoffLimit"] == 0
    head_env = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "BERTCTL_ATTEMPT_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "job-1-a1-token", "key": "token"}}} in head_env
    # The token is stored in the Secret only: nothing else the API server holds contains it.
    others = [o for (coll, _), o in kube.objects.items() if coll != SECRETS]
    assert others and TOKEN not in json.dumps(others)


def test_poll_starting_then_running(kube, backend):
    handle = backend.launch(request(1))
    kube.take_requests()
    assert backend.poll(JOB, 1, handle).state == RunState.STARTING
    assert kube.take_requests() == poll_requests(1, [])
    start_cluster(kube, "job-1-a1")
    status = backend.poll(JOB, 1, handle)
    assert (status.state, status.reason) == (RunState.RUNNING, None)
    assert kube.take_requests() == poll_requests(1, ["od-1", "spot-0", "spot-1"])


def test_worker_preemption_is_retried_and_attempt_1_is_deleted_before_attempt_2(kube, backend):
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    kube.take_requests()
    # The kubelet shuts spot-0 down: the worker pod gets DisruptionTarget; the trainer checkpoints.
    worker = kube.get(PODS, "job-1-a1-raycluster-gpu-workers-worker-0")
    worker["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True",
                                           "reason": "TerminationByKubelet"})
    status = backend.poll(JOB, 1, handle)
    assert status.state == RunState.RUNNING and "TerminationByKubelet" in status.message
    # ... then exits with the preempted code; the pod and its node are gone by the next poll.
    kube.remove(PODS, "job-1-a1-raycluster-gpu-workers-worker-0")
    kube.remove(NODES, "spot-0")
    set_status(kube, "job-1-a1", jobDeploymentStatus="Complete", jobStatus="FAILED",
               message=f"Job entrypoint command failed with exit code {int(ExitCode.PREEMPTED)}")
    kube.take_requests()
    status = backend.poll(JOB, 1, handle)
    assert (status.state, status.reason, status.exit_code) == (RunState.EXITED, EndReason.PREEMPTED, 75)
    assert kube.take_requests() == poll_requests(1, ["od-1", "spot-1"])
    assert status.reason in RETRIED and reason_for_exit(status.exit_code) == EndReason.PREEMPTED

    backend.terminate(JOB, 1, handle, grace_s=30)
    handle2 = backend.launch(request(2))
    assert kube.take_requests() == delete_requests(1) + launch_requests(2)
    assert kube.names(RAYJOBS) == ["job-1-a2"] and handle2 == "train/job-1-a2"
    assert kube.names(SECRETS) == ["job-1-a2-token"] and kube.names(CONFIGMAPS) == ["job-1-a2-manifest"]


def test_preempted_pod_already_gone_is_found_in_events(kube, backend):
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    kube.remove(PODS, "job-1-a1-raycluster-gpu-workers-worker-1")
    add_event(kube, "Pod", "job-1-a1-raycluster-gpu-workers-worker-1", "TaintManagerEviction",
              "Marking for deletion Pod train/job-1-a1-raycluster-gpu-workers-worker-1")
    add_event(kube, "Pod", "other-job-head", "Preempted", "not ours")
    set_status(kube, "job-1-a1", jobDeploymentStatus="Failed", jobStatus="FAILED", message="worker died")
    kube.take_requests()
    status = backend.poll(JOB, 1, handle)
    assert (status.state, status.reason) == (RunState.EXITED, EndReason.PREEMPTED)
    assert "TaintManagerEviction" in status.message
    assert kube.take_requests() == poll_requests(1, ["od-1", "spot-0"], events=True)


def test_fencing_launch_deletes_older_attempt_first(kube, backend):
    backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    kube.take_requests()
    backend.launch(request(2))  # the supervisor did not terminate attempt 1: launch fences it
    assert kube.take_requests() == [f"GET {RAYJOBS}?{SEL}"] + delete_requests(1) + launch_requests(2)[1:]
    assert kube.names(PODS) == [] and kube.names(RAYJOBS) == ["job-1-a2"]
    with pytest.raises(PermanentError, match="stale attempt 1"):
        backend.launch(request(1))
    assert kube.take_requests() == [f"GET {RAYJOBS}?{SEL}"]


@pytest.mark.parametrize("remove_node, reason", [(False, EndReason.WORKER_LOST), (True, EndReason.NODE_LOST)])
def test_head_loss_ends_the_attempt_for_a_new_one(kube, backend, remove_node, reason):
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    if remove_node:
        kube.remove(NODES, "od-1")  # the head's node vanished; the pod object lingers
        nodes, events = ["od-1", "spot-0", "spot-1"], False
    else:
        kube.remove(PODS, "job-1-a1-raycluster-head-x")  # head pod deleted, RayJob still "Running"
        nodes, events = ["spot-0", "spot-1"], True
    kube.take_requests()
    status = backend.poll(JOB, 1, handle)
    assert (status.state, status.reason) == (RunState.EXITED, reason)
    assert "head" in status.message
    assert kube.take_requests() == poll_requests(1, nodes, events=events)
    assert status.reason in RETRIED
    backend.terminate(JOB, 1, handle, grace_s=10)
    backend.launch(request(2))
    assert kube.take_requests() == delete_requests(1) + launch_requests(2)


def test_user_error_fails_without_retry(kube, backend):
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    set_status(kube, "job-1-a1", jobDeploymentStatus="Complete", jobStatus="FAILED",
               message=f"Job entrypoint command failed with exit code {int(ExitCode.DATA_ERROR)}, last logs: ...")
    kube.take_requests()
    status = backend.poll(JOB, 1, handle)
    assert (status.state, status.reason, status.exit_code) == (RunState.EXITED, EndReason.DATA_ERROR, 65)
    assert kube.take_requests() == poll_requests(1, ["od-1", "spot-0", "spot-1"])
    assert status.reason not in RETRIED


def _starting_attempt(kube, api_client, clock: list[float]):
    """Attempt 1 launched on a backend with a 120 s image-pull grace, its cluster initializing."""
    backend = KubeRayBackend(api_client=api_client, poll_interval_s=0.0, delete_timeout_s=5.0, sleep=lambda s: None,
                             image_pull_grace_s=120.0, clock=lambda: clock[0])
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    set_status(kube, "job-1-a1", jobDeploymentStatus="Initializing")
    return backend, handle


def test_image_pull_error_gets_a_grace_then_is_permanent(kube, api_client):
    clock = [1000.0]
    backend, handle = _starting_attempt(kube, api_client, clock)
    pull_fails(kube, "job-1-a1-raycluster-head-x", "ErrImagePull")
    status = backend.poll(JOB, 1, handle)   # first seen now: the grace starts
    assert (status.state, status.reason) == (RunState.STARTING, None)
    assert "pulling image registry.example/bertctl:1 failed (ErrImagePull" in status.message
    clock[0] = 1119.0
    assert backend.poll(JOB, 1, handle).state == RunState.STARTING
    clock[0] = 1120.0
    status = backend.poll(JOB, 1, handle)
    assert (status.state, status.reason) == (RunState.EXITED, EndReason.IMAGE_PULL)
    assert "cannot pull image registry.example/bertctl:1 for 120s" in status.message
    assert "spec.kubernetes.image" in status.message and status.reason not in RETRIED
    assert decide_attempt_end(status.reason, restarts_used=0, max_restarts=10).action is Action.FAIL


def test_a_pull_error_that_clears_starts_its_grace_anew(kube, api_client):
    clock = [1000.0]
    backend, handle = _starting_attempt(kube, api_client, clock)
    head = kube.get(PODS, "job-1-a1-raycluster-head-x")
    pulled = dict(head["status"]["containerStatuses"][0]["state"])
    pull_fails(kube, head["metadata"]["name"], "ImagePullBackOff")
    assert backend.poll(JOB, 1, handle).state == RunState.STARTING
    head["status"]["containerStatuses"][0]["state"] = pulled  # the registry answered again
    clock[0] = 1100.0
    assert backend.poll(JOB, 1, handle).message == "RayJob Initializing: starting the Ray cluster"
    pull_fails(kube, head["metadata"]["name"], "ErrImagePull")  # another pod, another hiccup
    clock[0] = 1150.0
    assert backend.poll(JOB, 1, handle).state == RunState.STARTING  # 50 s into a new grace, not 150 s
    clock[0] = 1270.0
    assert backend.poll(JOB, 1, handle).reason == EndReason.IMAGE_PULL


def test_succeeded(kube, backend):
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    set_status(kube, "job-1-a1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    status = backend.poll(JOB, 1, handle)
    assert (status.state, status.reason, status.exit_code) == (RunState.EXITED, EndReason.SUCCEEDED, 0)


def test_cancel_deletes_waits_and_leaves_nothing(kube, backend):
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    kube.take_requests()
    backend.cancel(JOB, namespace="train")
    assert kube.take_requests() == [f"GET {RAYJOBS}?{SEL}"] + delete_requests(1)
    assert kube.names(RAYJOBS) == kube.names(PODS) == kube.names(SECRETS) == kube.names(CONFIGMAPS) == []
    assert backend.poll(JOB, 1, handle).state == RunState.GONE


def test_relaunch_of_same_attempt_is_idempotent(kube, backend):
    backend.launch(request(1))
    kube.take_requests()
    assert backend.launch(request(1)) == "train/job-1-a1"  # manager restarted mid-launch
    assert kube.take_requests() == [f"GET {RAYJOBS}?{SEL}", f"POST {SECRETS}", f"PUT {SECRETS}/job-1-a1-token",
                                    f"POST {CONFIGMAPS}", f"PUT {CONFIGMAPS}/job-1-a1-manifest", f"POST {RAYJOBS}"]
    assert kube.names(RAYJOBS) == ["job-1-a1"]


def test_spot_interruption_taint_on_a_node(kube, backend):
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    kube.put(NODES, node("spot-1", taints=[{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]))
    set_status(kube, "job-1-a1", jobDeploymentStatus="Failed", jobStatus="FAILED", message="Ray worker died")
    status = backend.poll(JOB, 1, handle)
    assert (status.state, status.reason) == (RunState.EXITED, EndReason.PREEMPTED)
    assert "karpenter.sh/disrupted" in status.message


def test_pods_get_the_advertised_manager_url(kube, api_client, monkeypatch):
    monkeypatch.setenv("BERTCTL_MANAGER_URL", "http://bertctl-manager.bertctl.svc:8470")
    advertised = get_backend("kuberay", api_client=api_client, poll_interval_s=0.0, sleep=lambda s: None)
    req = LaunchRequest(job_id=JOB, attempt=1, manifest=manifest(), manager_url="http://127.0.0.1:8470",
                        attempt_token=TOKEN)
    advertised.launch(req)
    env = kube.get(RAYJOBS, "job-1-a1")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "BERTCTL_MANAGER_URL", "value": "http://bertctl-manager.bertctl.svc:8470"} in env


def test_terminate_force_deletes_pods_that_outlive_the_grace(kube, backend):
    handle = backend.launch(request(1))
    start_cluster(kube, "job-1-a1")
    stuck = kube.get(PODS, "job-1-a1-raycluster-gpu-workers-worker-1")
    stuck["metadata"]["finalizers"] = ["example.com/unreachable-node"]
    kube.take_requests()
    backend.terminate(JOB, 1, handle, grace_s=0)  # the attempt already ended: nothing to save
    pods = f"GET {PODS}?{SEL},bertctl.dev/attempt=1"
    name = f"{RAYJOBS}/job-1-a1"
    assert kube.take_requests() == [
        f"DELETE {name}?propagationPolicy=Foreground",
        f"GET {name}",  # still there (its pods are in preStop) and the grace is over:
        pods,
        f"DELETE {PODS}/job-1-a1-raycluster-gpu-workers-worker-0?gracePeriodSeconds=0",
        f"DELETE {PODS}/job-1-a1-raycluster-gpu-workers-worker-1?gracePeriodSeconds=0",
        f"DELETE {PODS}/job-1-a1-raycluster-head-x?gracePeriodSeconds=0",
        f"GET {name}",  # gone
        pods,           # and so are the pods
        f"DELETE {SECRETS}/job-1-a1-token", f"DELETE {CONFIGMAPS}/job-1-a1-manifest"]
    assert kube.names(PODS) == [] and kube.names(RAYJOBS) == []


def test_terminate_without_a_handle_derives_the_name(kube, backend):
    backend.launch(request(1))
    kube.take_requests()
    backend.terminate(JOB, 1, "", grace_s=5)  # the manager stopped before recording the handle
    assert kube.take_requests() == delete_requests(1)


def test_a_rayjob_that_never_goes_away_is_a_temporary_error(kube, backend):
    from orchestrator.errors import TemporaryError

    handle = backend.launch(request(1))
    kube.delete_lag = 10**9  # a finalizer nobody removes
    backend.delete_timeout_s = 0.05
    with pytest.raises(TemporaryError, match="still exists"):
        backend.terminate(JOB, 1, handle, grace_s=1)
    assert kube.names(SECRETS) == ["job-1-a1-token"]  # nothing else deleted while the RayJob lingers


def test_forbidden_is_permanent_and_says_which_role(kube, backend):
    kube.fail[f"POST {RAYJOBS}"] = 403
    with pytest.raises(PermanentError, match="k8s/base/rbac.yaml"):
        backend.launch(request(1))


def test_api_server_errors_and_outages_are_temporary(kube, backend):
    from orchestrator.errors import TemporaryError

    handle = backend.launch(request(1))
    kube.fail[f"GET {RAYJOBS}/job-1-a1"] = 500
    with pytest.raises(TemporaryError, match="will retry"):
        backend.poll(JOB, 1, handle)
    kube.stop()
    with pytest.raises(TemporaryError):
        backend.poll(JOB, 1, handle)
