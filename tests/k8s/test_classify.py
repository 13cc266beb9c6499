"""The end-of-attempt classification as a table: pod / node / event / RayJob evidence -> (state, reason)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.contract import EndReason as R
from orchestrator.manager.backends.base import RunState as S
from orchestrator.manager.backends.kuberay_classify import rayjob_attempt_status
from tests.k8s.cluster_sim import event, node, pod, scheduling

LAB = {"bertctl.dev/job-id": "j", "bertctl.dev/attempt": "1"}
RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
FAILED = {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "job failed"}


def head(**status: Any) -> dict:
    return pod("j-a1-head", "od", LAB, "head", **status)


def worker(i: int = 0, node_name: str = "n0", **status: Any) -> dict:
    return pod(f"j-a1-worker-{i}", node_name, LAB, "worker", **status)


def disrupted(reason: str) -> dict:
    return {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": reason}]}


def exited(code: int) -> dict:
    return {"containerStatuses": [{"name": "ray-worker", "restartCount": 0,
                                   "state": {"terminated": {"exitCode": code}}}]}


def waiting(reason: str) -> dict:
    return {"containerStatuses": [{"name": "ray-worker", "image": "img:1", "restartCount": 0,
                                   "state": {"waiting": {"reason": reason}}}]}


def ray_failed(code: int) -> str:
    return f"Job entrypoint command failed with exit code {code}, last available logs (truncated to 20,000 chars): ..."


OK_NODES = {"od": node("od"), "n0": node("n0")}
SPOT_TAINT = [{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]

# (case, rayjob status, pods, nodes, events, expected state, expected reason)
TABLE = [
    ("new RayJob, no pods yet", {}, [], {}, [], S.STARTING, None),
    ("initializing", {"jobDeploymentStatus": "Initializing"}, [head()], {"od": node("od")}, [], S.STARTING, None),
    ("running, all healthy", RUNNING, [head(), worker()], OK_NODES, [], S.RUNNING, None),
    ("worker disrupted, job still running (trainer checkpoints)", RUNNING,
     [head(), worker(**disrupted("PreemptionByScheduler"))], OK_NODES, [], S.RUNNING, None),
    ("succeeded", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, [head()], OK_NODES, [],
     S.EXITED, R.SUCCEEDED),
    *[(f"failed + DisruptionTarget {why}", FAILED, [head(), worker(**disrupted(why))], OK_NODES, [],
       S.EXITED, R.PREEMPTED)
      for why in ("PreemptionByScheduler", "DeletionByTaintManager", "EvictionByEvictionAPI", "TerminationByKubelet")],
    ("failed + pod evicted by kubelet", FAILED, [head(), worker(phase="Failed", reason="Evicted")], OK_NODES, [],
     S.EXITED, R.PREEMPTED),
    ("failed + spot-interruption taint", FAILED, [head(), worker()],
     {"od": node("od"), "n0": node("n0", taints=SPOT_TAINT)}, [], S.EXITED, R.PREEMPTED),
    ("failed + GKE impending termination taint", FAILED, [head(), worker()],
     {"od": node("od"), "n0": node("n0", taints=[{"key": "cloud.google.com/impending-node-termination",
                                                   "effect": "NoSchedule"}])}, [], S.EXITED, R.PREEMPTED),
    ("failed + worker's node disappeared", FAILED, [head(), worker()], {"od": node("od"), "n0": None}, [],
     S.EXITED, R.NODE_LOST),
    ("failed + worker's node NotReady", FAILED, [head(), worker()],
     {"od": node("od"), "n0": node("n0", ready="Unknown")}, [], S.EXITED, R.NODE_LOST),
    ("failed + pod NodeLost", FAILED, [head(), worker(reason="NodeLost")], OK_NODES, [], S.EXITED, R.NODE_LOST),
    ("preemption beats a lost node", FAILED, [head(), worker(0, "n0"), worker(1, "n1", **disrupted("TerminationByKubelet"))],
     {"od": node("od"), "n0": None, "n1": node("n1")}, [], S.EXITED, R.PREEMPTED),
    ("failed + Preempted event for a pod already gone", FAILED, [head()], {"od": node("od")},
     [event("Pod", "j-a1-worker-3", "Preempted")], S.EXITED, R.PREEMPTED),
    ("failed + NodeNotReady event", FAILED, [head()], {"od": node("od")},
     [event("Node", "n9", "NodeNotReady")], S.EXITED, R.NODE_LOST),
    ("disruption beats a trainer failure code", {**FAILED, "message": ray_failed(69)},
     [head(), worker(**disrupted("DeletionByTaintManager"))], OK_NODES, [], S.EXITED, R.PREEMPTED),
    *[(f"trainer exit code {code} in the Ray job message", {**FAILED, "message": ray_failed(code)},
       [head(), worker()], OK_NODES, [], S.EXITED, reason)
      for code, reason in ((2, R.INVALID_CONFIG), (65, R.DATA_ERROR), (66, R.NAN_LOSS), (67, R.OUT_OF_MEMORY),
                           (69, R.INFRASTRUCTURE), (75, R.PREEMPTED), (1, R.WORKER_LOST))],
    *[(f"trainer exit code {code} from a container", FAILED, [head(), worker(**exited(code))], OK_NODES, [],
       S.EXITED, reason) for code, reason in ((65, R.DATA_ERROR), (2, R.INVALID_CONFIG))],
    ("container exit 137 is not the trainer's: worker lost", FAILED, [head(), worker(**exited(137))], OK_NODES, [],
     S.EXITED, R.WORKER_LOST),
    ("failed, no evidence at all", FAILED, [], {}, [], S.EXITED, R.WORKER_LOST),
    ("a Ray container's exit code is not the trainer's",
     {**FAILED, "message": "Ray head pod container ray-head terminated with exit code 2: Error"}, [], {}, [],
     S.EXITED, R.WORKER_LOST),
    ("stopped by Ray", {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, [head()], {"od": node("od")}, [],
     S.EXITED, R.WORKER_LOST),
    *[(f"image pull {why} (before the job ends)", {"jobDeploymentStatus": "Initializing"}, [head(), worker(**waiting(why))],
       OK_NODES, [], S.EXITED, R.IMAGE_PULL) for why in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")],
    ("head pod missing while running", RUNNING, [worker()], {"n0": node("n0")}, [], S.EXITED, R.WORKER_LOST),
    ("head pod missing, its eviction in events", RUNNING, [worker()], {"n0": node("n0")},
     [event("Pod", "j-a1-head", "Evicted")], S.EXITED, R.PREEMPTED),
    ("head's node disappeared", RUNNING, [head(), worker()], {"od": None, "n0": node("n0")}, [],
     S.EXITED, R.NODE_LOST),
    ("head restarted", RUNNING, [head(containerStatuses=[{"name": "ray-head", "restartCount": 1,
                                                         "state": {"running": {}}}]), worker()], OK_NODES, [],
     S.EXITED, R.WORKER_LOST),
    ("head being deleted", RUNNING, [{**head(), "metadata": {**head()["metadata"], "deletionTimestamp": "t"}}],
     {"od": node("od")}, [], S.EXITED, R.WORKER_LOST),
    ("head failed on a spot-tainted node", RUNNING, [head(phase="Failed"), worker()],
     {"od": node("od", taints=SPOT_TAINT), "n0": node("n0")}, [], S.EXITED, R.PREEMPTED),
]


@pytest.mark.parametrize("case, status, pods, nodes, events, state, reason", TABLE, ids=[t[0] for t in TABLE])
def test_classification_table(case, status, pods, nodes, events, state, reason):
    got = rayjob_attempt_status({"status": status}, pods, nodes, events)
    assert (got.state, got.reason) == (state, reason), got.message


def test_unknown_spot_taint_can_be_configured():
    nodes = {"od": node("od"), "n0": node("n0", taints=[{"key": "example.com/reclaim", "effect": "NoExecute"}])}
    assert rayjob_attempt_status({"status": FAILED}, [head(), worker()], nodes, []).reason == R.WORKER_LOST
    got = rayjob_attempt_status({"status": FAILED}, [head(), worker()], nodes, [], spot_taints={"example.com/reclaim"})
    assert got.reason == R.PREEMPTED


INIT = {"jobDeploymentStatus": "Initializing"}
NO_GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


def pending(i: int = 0, reason: str = "Unschedulable", message: str = NO_GPU) -> dict:
    return pod(f"j-a1-worker-{i}", "", LAB, "worker", **scheduling(reason, message))


# Startup: (case, rayjob status, pods, now, pull first seen, pull grace) -> (state, reason, in the message)
STARTUP = [
    ("workers Pending for capacity: the scheduler's words", INIT, [head(), pending(0), pending(1)],
     None, None, 0.0, S.STARTING, None, f"2 pod(s) waiting for a node (Unschedulable): {NO_GPU}"),
    ("the head's reason first", INIT, [pending(1, message="0/3 nodes: 1 untolerated taint"),
                                      pod("j-a1-head", "", LAB, "head", **scheduling("Unschedulable", "no CPU"))],
     None, None, 0.0, S.STARTING, None, ": no CPU"),
    ("scheduled, containers not started: the RayJob's state", INIT, [head(phase="Pending")],
     None, None, 0.0, S.STARTING, None, "RayJob Initializing"),
    ("image pull error younger than the grace", INIT, [head(), worker(**waiting("ErrImagePull"))],
     1050.0, 1000.0, 120.0, S.STARTING, None, "pulling image img:1 failed (ErrImagePull); failing in 70s"),
    ("a pull error outranks Pending pods within the grace", INIT, [pending(1), worker(**waiting("ImagePullBackOff"))],
     1000.0, 1000.0, 120.0, S.STARTING, None, "pulling image img:1"),
    ("image pull error as old as the grace", INIT, [head(), worker(**waiting("ImagePullBackOff"))],
     1120.0, 1000.0, 120.0, S.EXITED, R.IMAGE_PULL, "cannot pull image img:1 for 120s: ImagePullBackOff"),
    ("image pull error, no first-seen time: no grace", INIT, [head(), worker(**waiting("ErrImagePull"))],
     1000.0, None, 120.0, S.EXITED, R.IMAGE_PULL, "spec.kubernetes.image"),
    ("a new worker's pull error within the grace does not stop training", RUNNING,
     [head(), worker(**waiting("ErrImagePull"))], 1010.0, 1000.0, 120.0, S.RUNNING, None, ""),
    ("within the grace other evidence decides", FAILED,
     [head(), worker(0, **disrupted("TerminationByKubelet")), worker(1, **waiting("ErrImagePull"))],
     1010.0, 1000.0, 120.0, S.EXITED, R.PREEMPTED, "TerminationByKubelet"),
    ("past the grace the pull error outranks the RayJob's end", FAILED, [head(), worker(**waiting("ErrImagePull"))],
     1200.0, 1000.0, 120.0, S.EXITED, R.IMAGE_PULL, "img:1"),
]


@pytest.mark.parametrize("case, status, pods, now, seen, grace, state, reason, says", STARTUP,
                         ids=[t[0] for t in STARTUP])
def test_startup_table(case, status, pods, now, seen, grace, state, reason, says):
    got = rayjob_attempt_status({"status": status}, pods, OK_NODES, [], now=now, pull_seen_at=seen,
                                pull_grace_s=grace)
    assert (got.state, got.reason) == (state, reason), got.message
    assert says in got.message
