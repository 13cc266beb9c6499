"""Evaluations on KubeRay: one Kubernetes Job per evaluation, with the trainer's image, in its own pod.

The pod asks for ``spec.evaluation.resources`` (CPU, memory, GPUs) of its own, so the scheduler
places it beside the RayJob without taking anything from the attempt's pods. The token lives only
in a per-evaluation Secret read through ``secretKeyRef`` (never in the Job, its args or a log); the
Job runs once (``backoffLimit: 0``) under a deadline of the tasks' budgets plus a margin; its
Secret is deleted when the evaluation ends, the Job (and its pod's log) when
``ttlSecondsAfterFinished`` has passed. Rendering is pure; ``KubeEvaluationLauncher`` creates, polls and deletes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from orchestrator import contract
from orchestrator.errors import PermanentError
from orchestrator.manager.backends.evaluation_local import EVALUATE, EvaluationRequest, EvaluationStatus
from orchestrator.manager.backends.kuberay_render import (GPU_TOLERATION, KUEUE_QUEUE_LABEL, LABEL_JOB,
                                                          LABEL_MANAGED, TOKEN_KEY, slug)
from orchestrator.spec import PretrainJob, parse_manifest

LABEL_EVALUATION = "bertctl.dev/evaluation-step"
STARTUP_MARGIN_S = 300  # image pull, interpreter and torch start, the checkpoint's export


def job_name(job_id: str, step: int) -> str:
    return f"{slug(job_id)}-eval-{step}"[:52]  # the Job controller appends a pod suffix within 63


def _meta(name: str, job: PretrainJob, job_id: str, step: int) -> dict[str, Any]:
    labels = {LABEL_MANAGED: "bertctl", LABEL_JOB: slug(job_id), LABEL_EVALUATION: str(step)}
    return {"name": name, "namespace": job.spec.kubernetes.namespace, "labels": labels}


def evaluation_secret(job: PretrainJob, req: EvaluationRequest) -> dict[str, Any]:
    """The one object holding the evaluation's token. Built only by the launcher; never printed."""
    meta = _meta(f"{job_name(req.job_id, req.step)}-token", job, req.job_id, req.step)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "stringData": {TOKEN_KEY: req.token}}


def _resources(job: PretrainJob) -> dict[str, Any]:
    r = job.spec.evaluation.resources
    amounts: dict[str, Any] = {"cpu": f"{r.cpus:g}", "memory": r.memory}
    if r.gpus:
        amounts["nvidia.com/gpu"] = str(r.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container(job: PretrainJob, req: EvaluationRequest, manager_url: str) -> dict[str, Any]:
    threads = str(job.spec.evaluation.resources.threads())
    tasks = json.dumps([t.model_dump(mode="json") for t in job.spec.evaluation.tasks], separators=(",", ":"))
    env = [{"name": contract.ENV_MANAGER_URL, "value": manager_url},
           {"name": contract.ENV_EVALUATION_TOKEN, "valueFrom": {"secretKeyRef": {
               "name": f"{job_name(req.job_id, req.step)}-token", "key": TOKEN_KEY}}},
           {"name": "OMP_NUM_THREADS", "value": threads}, {"name": "MKL_NUM_THREADS", "value": threads},
           {"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    c: dict[str, Any] = {"name": "evaluate", "image": job.spec.kubernetes.image, "command": ["python", *EVALUATE],
                         "args": req.argv(tasks), "env": env, "resources": _resources(job)}
    if job.spec.kubernetes.credentials_secret:  # the data may be on S3, like the shards
        c["envFrom"] = [{"secretRef": {"name": job.spec.kubernetes.credentials_secret}}]
    return c


def render_evaluation_job(job: PretrainJob, req: EvaluationRequest, manager_url: str) -> dict[str, Any]:
    k = job.spec.kubernetes
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [_container(job, req, manager_url)]}
    if k.service_account:
        pod["serviceAccountName"] = k.service_account
    if k.priority_class:
        pod["priorityClassName"] = k.priority_class
    tolerations = [t.model_dump(exclude_none=True) for t in k.tolerations]
    if job.spec.evaluation.resources.gpus:
        tolerations.append(dict(GPU_TOLERATION))
        if k.worker_node_selector:
            pod["nodeSelector"] = dict(k.worker_node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    meta = _meta(job_name(req.job_id, req.step), job, req.job_id, req.step)
    if k.queue:
        meta["labels"][KUEUE_QUEUE_LABEL] = k.queue
    deadline = math.ceil(job.spec.evaluation.budget_s()) + STARTUP_MARGIN_S
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": deadline,
                     "ttlSecondsAfterFinished": k.ttl_seconds_after_finished,
                     "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod}}}


class KubeEvaluationLauncher:
    """Creates, polls and deletes evaluation Jobs; ``manager_url``: where pods reach the manager
    (its Service), as for the KubeRay backend's attempts."""

    def __init__(self, api_client: Any = None, manager_url: str | None = None):
        self._api_client, self.manager_url = api_client, manager_url
        self._core = self._batch = None

    def _apis(self) -> tuple[Any, Any]:
        if self._core is None:
            from kubernetes import client

            from orchestrator.manager.backends.kuberay import _load_api_client
            api = self._api_client or _load_api_client()
            self._core, self._batch = client.CoreV1Api(api), client.BatchV1Api(api)
        return self._core, self._batch

    def log_path(self, job_id: str, step: int) -> str:
        return ""  # `kubectl logs job/<name>` (docs/finetune.md)

    def launch(self, req: EvaluationRequest) -> str:
        job = parse_manifest(req.manifest)
        core, batch = self._apis()
        ns = job.spec.kubernetes.namespace
        core.create_namespaced_secret(ns, evaluation_secret(job, req))
        obj = render_evaluation_job(job, req, self.manager_url or req.manager_url)
        batch.create_namespaced_job(ns, obj)
        return f"{ns}/{obj['metadata']['name']}"

    def poll(self, job_id: str, step: int, handle: str) -> EvaluationStatus:
        from kubernetes.client.exceptions import ApiException

        ns, name = handle.split("/", 1)
        try:
            obj = self._apis()[1].read_namespaced_job(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return EvaluationStatus(False, message=f"the Kubernetes Job {handle} is gone")
            raise
        status = obj.status
        if status and status.succeeded:
            return EvaluationStatus(False, exit_code=0)
        failed = [c for c in (status.conditions or []) if c.type == "Failed" and c.status == "True"] if status else []
        if failed:
            return EvaluationStatus(False, message=f"the Kubernetes Job {handle} failed: {failed[0].reason}: "
                                                   f"{failed[0].message}")
        return EvaluationStatus(True)

    def terminate(self, job_id: str, step: int, handle: str, grace_s: float) -> None:
        from kubernetes import client

        ns, name = handle.split("/", 1)
        body = client.V1DeleteOptions(propagation_policy="Background", grace_period_seconds=math.ceil(grace_s))
        self._delete(lambda: self._apis()[1].delete_namespaced_job(name, ns, body=body))
        self.cleanup(job_id, step, handle)

    def cleanup(self, job_id: str, step: int, handle: str = "") -> None:
        if not handle:
            return
        ns, name = handle.split("/", 1)
        self._delete(lambda: self._apis()[0].delete_namespaced_secret(f"{name}-token", ns))

    @staticmethod
    def _delete(call) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            call()
        except ApiException as exc:
            if exc.status != 404:
                raise PermanentError(f"cannot delete an evaluation object: HTTP {exc.status} {exc.reason}") from None
