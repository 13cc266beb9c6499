"""Render one attempt of a PretrainJob into Kubernetes objects: a ConfigMap and a KubeRay RayJob.

Pure functions over a validated manifest (no API calls), shared by `bertctl render` and the
KubeRay backend so what a user previews is exactly what the manager creates. The attempt token
is a credential: it lives only in the per-attempt Secret built by ``attempt_secret`` (which the
backend creates and `bertctl render` never prints); pods read it through ``secretKeyRef``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from typing import Any

import yaml

from orchestrator import contract
from orchestrator.spec import PretrainJob

API_VERSION = "ray.io/v1"
KIND = "RayJob"
LABEL_JOB = "bertctl.dev/job-id"
LABEL_ATTEMPT = "bertctl.dev/attempt"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TOKEN_KEY = "token"
MANIFEST_DIR = "/etc/bertctl"
NOTICE_DIR = "/var/run/bertctl"
NOTICE_FILE = f"{NOTICE_DIR}/preempt"
ENTRYPOINT = f"python -m orchestrator.train --manifest {MANIFEST_DIR}/manifest.yaml"
# Seconds beyond the checkpoint deadline before the kubelet kills a pod: covers the step in
# flight when the notice lands plus Ray's own shutdown.
GRACE_MARGIN_S = 30
# KubeRay derives RayCluster, Service and pod names from the RayJob name and appends suffixes;
# keeping the RayJob name short keeps every derived name under the 63-character label limit.
MAX_NAME = 40
# Spot capacity is labelled differently per provider. Required node-affinity terms are ORed,
# so one rendering lands on spot nodes of Karpenter (EKS), EKS managed node groups and GKE.
SPOT_LABELS: tuple[tuple[str, str], ...] = (
    ("karpenter.sh/capacity-type", "spot"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("cloud.google.com/gke-spot", "true"),
)
# Taints spot / GPU node pools commonly carry (GKE's documented spot taint, NVIDIA's GPU taint).
SPOT_TOLERATIONS = ({"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                     "effect": "NoSchedule"},)
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
_SLUG_RE = re.compile(r"[^a-z0-9-]+")


def slug(job_id: str, limit: int = 30) -> str:
    """A DNS-1035 label for a job id (KubeRay requires one for RayJob names: it starts with a
    letter); hashed when it had to change, so distinct ids stay distinct."""
    s = _SLUG_RE.sub("-", job_id.lower()).strip("-") or "job"
    if not s[0].isalpha():
        s = f"j-{s}"
    if s == job_id and len(s) <= limit:
        return s
    digest = hashlib.sha1(job_id.encode()).hexdigest()[:8]
    return f"{s[: limit - 9].rstrip('-')}-{digest}"


def rayjob_name(job_id: str, attempt: int) -> str:
    return f"{slug(job_id)}-a{attempt}"[:MAX_NAME]


def secret_name(job_id: str, attempt: int) -> str:
    return f"{rayjob_name(job_id, attempt)}-token"


def configmap_name(job_id: str, attempt: int) -> str:
    return f"{rayjob_name(job_id, attempt)}-manifest"


def job_selector(job_id: str, attempt: int | None = None) -> str:
    sel = f"{LABEL_JOB}={slug(job_id)}"
    return sel if attempt is None else f"{sel},{LABEL_ATTEMPT}={attempt}"


def labels(job_id: str, attempt: int) -> dict[str, str]:
    return {LABEL_MANAGED: "bertctl", LABEL_JOB: slug(job_id), LABEL_ATTEMPT: str(attempt)}


def _meta(name: str, job: PretrainJob, job_id: str, attempt: int) -> dict[str, Any]:
    return {"name": name, "namespace": job.spec.kubernetes.namespace, "labels": labels(job_id, attempt)}


def attempt_secret(job: PretrainJob, job_id: str, attempt: int, token: str) -> dict[str, Any]:
    """The one object holding the attempt token. Only the backend builds it; never printed."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(secret_name(job_id, attempt), job, job_id, attempt),
            "stringData": {TOKEN_KEY: token}}


def render_configmap(job: PretrainJob, job_id: str, attempt: int) -> dict[str, Any]:
    # The manifest carries no credential: spec.parse_manifest refuses credential-like values.
    text = yaml.safe_dump(job.to_dict(), sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(configmap_name(job_id, attempt), job, job_id, attempt),
            "data": {"manifest.yaml": text}}


def grace_period_s(job: PretrainJob) -> int:
    return math.ceil(job.spec.checkpoint.preemption_deadline_s) + GRACE_MARGIN_S


def _env(job: PretrainJob, job_id: str, attempt: int, manager_url: str, mtbp_s: float | None) -> list[dict]:
    env = [
        {"name": contract.ENV_JOB_ID, "value": job_id},
        {"name": contract.ENV_ATTEMPT, "value": str(attempt)},
        {"name": contract.ENV_MANAGER_URL, "value": manager_url},
        {"name": contract.ENV_ATTEMPT_TOKEN, "valueFrom": {"secretKeyRef": {
            "name": secret_name(job_id, attempt), "key": TOKEN_KEY}}},
        {"name": contract.ENV_NOTICE_FILE, "value": NOTICE_FILE},
    ]
    if mtbp_s is not None:
        env.append({"name": contract.ENV_MTBP_S, "value": f"{mtbp_s:.1f}"})
    return env


def _pre_stop(job: PretrainJob) -> dict[str, Any]:
    # The notice file tells the trainer to checkpoint; sleeping keeps the container (and its
    # Ray worker) alive until the checkpoint deadline has passed, since SIGTERM follows preStop.
    deadline = math.ceil(job.spec.checkpoint.preemption_deadline_s)
    script = f"mkdir -p {NOTICE_DIR} && touch {NOTICE_FILE} && sleep {deadline}"
    return {"exec": {"command": ["/bin/sh", "-c", script]}}


def _volumes(job_id: str, attempt: int) -> list[dict[str, Any]]:
    return [
        {"name": "manifest", "configMap": {"name": configmap_name(job_id, attempt)}},
        {"name": "notice", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]


_MOUNTS = [
    {"name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": True},
    {"name": "notice", "mountPath": NOTICE_DIR},
    {"name": "dshm", "mountPath": "/dev/shm"},
]


def _container(job: PretrainJob, name: str, env: list[dict], resources: dict[str, Any]) -> dict[str, Any]:
    k = job.spec.kubernetes
    c: dict[str, Any] = {"name": name, "image": k.image, "env": copy.deepcopy(env), "resources": resources,
                         "volumeMounts": [dict(m) for m in _MOUNTS],
                         "lifecycle": {"preStop": _pre_stop(job)}}
    if k.credentials_secret:
        c["envFrom"] = [{"secretRef": {"name": k.credentials_secret}}]
    return c


def _not_spot_affinity() -> dict[str, Any]:
    # NotIn also matches nodes without the label, so plain on-demand nodes qualify.
    reqs = [{"key": key, "operator": "NotIn", "values": [value]} for key, value in SPOT_LABELS]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": reqs}]}}}


def _spot_affinity() -> dict[str, Any]:
    terms = [{"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}
             for key, value in SPOT_LABELS]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


def _pod_spec(job: PretrainJob, job_id: str, attempt: int, container: dict, *, head: bool) -> dict[str, Any]:
    k = job.spec.kubernetes
    spec: dict[str, Any] = {"containers": [container], "volumes": _volumes(job_id, attempt),
                            "terminationGracePeriodSeconds": grace_period_s(job)}
    if k.service_account:
        spec["serviceAccountName"] = k.service_account
    if k.priority_class:
        spec["priorityClassName"] = k.priority_class
    selector = k.head_node_selector if head else k.worker_node_selector
    if selector:
        spec["nodeSelector"] = dict(selector)
    tolerations = [t.model_dump(exclude_none=True) for t in k.tolerations]
    if head:
        spec["affinity"] = _not_spot_affinity()
    else:
        if k.spot:
            spec["affinity"] = _spot_affinity()
            tolerations = [dict(t) for t in SPOT_TOLERATIONS] + tolerations
        if job.spec.resources.gpus_per_worker:
            tolerations.append(dict(GPU_TOLERATION))
    if tolerations:
        spec["tolerations"] = tolerations
    return spec


def _template(job: PretrainJob, job_id: str, attempt: int, container: dict, *, head: bool) -> dict[str, Any]:
    return {"metadata": {"labels": labels(job_id, attempt)},
            "spec": _pod_spec(job, job_id, attempt, container, head=head)}


def _head_group(job: PretrainJob, job_id: str, attempt: int, env: list[dict]) -> dict[str, Any]:
    # The head runs the driver and the GCS only: 0 logical CPUs keeps training workers off it.
    resources = {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    container = _container(job, "ray-head", env, resources)
    container["ports"] = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                          {"containerPort": 10001, "name": "client"}]
    return {"rayStartParams": {"num-cpus": "0"},
            "template": _template(job, job_id, attempt, container, head=True)}


def _worker_group(job: PretrainJob, job_id: str, attempt: int, env: list[dict]) -> dict[str, Any]:
    r = job.spec.resources
    counts = r.worker_counts()
    cpu = f"{r.cpus_per_worker:g}"
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": r.memory_per_worker},
                                 "limits": {"cpu": cpu, "memory": r.memory_per_worker}}
    if r.gpus_per_worker:
        resources["limits"]["nvidia.com/gpu"] = str(r.gpus_per_worker)
        resources["requests"]["nvidia.com/gpu"] = str(r.gpus_per_worker)
    container = _container(job, "ray-worker", env, resources)
    return {"groupName": "gpu-workers" if r.gpus_per_worker else "workers",
            # Start with the guaranteed minimum; the Ray autoscaler adds workers up to max as
            # Ray Train asks for them (and as spot capacity allows).
            "replicas": counts[0], "minReplicas": counts[0], "maxReplicas": counts[-1],
            "rayStartParams": {},
            "template": _template(job, job_id, attempt, container, head=False)}


def render_rayjob(job: PretrainJob, job_id: str, attempt: int, manager_url: str,
                  mtbp_s: float | None = None) -> dict[str, Any]:
    k = job.spec.kubernetes
    env = _env(job, job_id, attempt, manager_url, mtbp_s)
    meta = _meta(rayjob_name(job_id, attempt), job, job_id, attempt)
    spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "submissionMode": "K8sJobMode",
        # The manager owns retries: every attempt is a fresh RayJob with a new fencing token.
        "backoffLimit": 0,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": k.ttl_seconds_after_finished,
        "rayClusterSpec": {
            "enableInTreeAutoscaling": True,
            "headGroupSpec": _head_group(job, job_id, attempt, env),
            "workerGroupSpecs": [_worker_group(job, job_id, attempt, env)],
        },
    }
    if k.queue:
        meta["labels"][KUEUE_QUEUE_LABEL] = k.queue
        spec["suspend"] = True  # Kueue unsuspends the RayJob once it admits it
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}


def render_attempt(job: PretrainJob, job_id: str, attempt: int, manager_url: str,
                   mtbp_s: float | None = None) -> list[dict[str, Any]]:
    """The objects of one attempt that carry no secret, in creation order (ConfigMap, RayJob)."""
    return [render_configmap(job, job_id, attempt),
            render_rayjob(job, job_id, attempt, manager_url, mtbp_s)]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the embedded manifest) as literal blocks, so they stay readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False)
