"""What the KubeRay operator, the scheduler and the cloud would do to an attempt, played by hand
against the fake API server (statuses, pods, nodes, events shaped like the real ones)."""

from __future__ import annotations

from typing import Any

from tests.k8s.conftest import EVENTS, NODES, PODS, RAYJOBS


def node(name: str, *, taints: list[dict] | None = None, ready: str = "True") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"taints": taints or []},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def pod(name: str, node_name: str, labels: dict[str, str], node_type: str, **status: Any) -> dict[str, Any]:
    lab = dict(labels, **{"ray.io/node-type": node_type})
    st = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
          "containerStatuses": [{"name": f"ray-{node_type}", "image": "registry.example/bertctl:1",
                                 "restartCount": 0, "state": {"running": {}}}]}
    st.update(status)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": lab},
            "spec": {"nodeName": node_name, "containers": [{"name": f"ray-{node_type}"}]}, "status": st}


def set_status(kube, name: str, **status: Any) -> None:
    kube.get(RAYJOBS, name)["status"] = status


def start_cluster(kube, name: str, workers: int = 2) -> dict[str, str]:
    """The operator brought up the RayCluster: a head on an on-demand node, workers on spot nodes."""
    labels = {k: v for k, v in kube.get(RAYJOBS, name)["metadata"]["labels"].items() if k.startswith("bertctl.dev/")}
    kube.put(NODES, node("od-1"))
    kube.put(PODS, pod(f"{name}-raycluster-head-x", "od-1", labels, "head"))
    for i in range(workers):
        kube.put(NODES, node(f"spot-{i}"))
        kube.put(PODS, pod(f"{name}-raycluster-gpu-workers-worker-{i}", f"spot-{i}", labels, "worker"))
    set_status(kube, name, jobDeploymentStatus="Running", jobStatus="RUNNING",
               rayClusterName=f"{name}-raycluster")
    return labels


def event(involved_kind: str, involved_name: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{involved_name}.{reason.lower()}"},
            "involvedObject": {"kind": involved_kind, "name": involved_name}, "reason": reason, "message": message}


def add_event(kube, *args: Any) -> None:
    kube.put(EVENTS, event(*args))


def scheduling(reason: str, message: str) -> dict[str, Any]:
    """The status of a pod the scheduler has not placed: Pending, PodScheduled=False, no containers yet."""
    return {"phase": "Pending", "containerStatuses": [],
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": reason, "message": message}]}


def workers_unschedulable(kube, name: str, message: str, workers: int = 2) -> None:
    """The operator created the RayCluster: its head runs on a CPU node, its GPU workers wait for a node."""
    labels = {k: v for k, v in kube.get(RAYJOBS, name)["metadata"]["labels"].items() if k.startswith("bertctl.dev/")}
    kube.put(NODES, node("od-1"))
    kube.put(PODS, pod(f"{name}-raycluster-head-x", "od-1", labels, "head"))
    for i in range(workers):
        kube.put(PODS, pod(f"{name}-raycluster-gpu-workers-worker-{i}", "", labels, "worker",
                           **scheduling("Unschedulable", message)))
    set_status(kube, name, jobDeploymentStatus="Initializing", rayClusterName=f"{name}-raycluster")


def pull_fails(kube, pod_name: str, reason: str = "ErrImagePull") -> None:
    """The kubelet cannot pull the pod's image (a registry hiccup, or a wrong name: it cannot tell)."""
    kube.get(PODS, pod_name)["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": reason, "message": f"rpc error: code = Unknown desc = failed to pull: {reason}"}}
