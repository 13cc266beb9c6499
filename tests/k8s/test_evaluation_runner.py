"""spec.evaluation on KubeRay through the manager's own parts: a real store (SQLite and PostgreSQL),
the heartbeat path that commits checkpoints, the evaluation runner and the Kubernetes launcher over
the fake API server. A committed checkpoint becomes a batch/v1 Job and its token Secret; the token
the Secret holds is the one the manager accepts reports with; the Job's end closes the evaluation
and deletes the Secret; a Job that fails before reporting fails its tasks, never the job."""

from __future__ import annotations

import base64
import copy

import pytest

from orchestrator.contract import CheckpointRef, EvaluationReport, Heartbeat
from orchestrator.manager.auth import hash_token
from orchestrator.manager.backends.evaluation_kube import TOKEN_KEY, KubeEvaluationLauncher, job_name
from orchestrator.manager.evaluations import EvaluationRunner, ReportOutcome, job_evaluations, record_report
from orchestrator.manager.heartbeats import Outcome, apply_heartbeat
from orchestrator.spec import parse_manifest
from tests.k8s.conftest import MANIFEST, SECRETS
from tests.k8s.test_evaluation_job import EVALUATION, JOBS
from tests.manager.conftest import pg_schema, store  # noqa: F401 - the real stores, as fixtures

SERVICE = "http://bertctl-manager.bertctl:8470"


@pytest.fixture
def runner(store, api_client):  # noqa: F811 - the imported fixture
    return EvaluationRunner(store, {"kuberay": KubeEvaluationLauncher(api_client=api_client, manager_url=SERVICE)},
                            lambda: SERVICE)


def _running_job(store) -> str:  # noqa: F811
    manifest = copy.deepcopy(MANIFEST)
    manifest["spec"]["evaluation"] = {**EVALUATION, "every_checkpoints": 1}
    job, _ = store.create_job(parse_manifest(manifest).to_dict(), "kuberay", 1.0)
    assert store.start_attempt(job["id"], 1, hash_token("attempt-token"), 1.0)
    store.record_launch(job["id"], 1, "train/job-a1", "", 1.0)
    return job["id"]


def _commit(store, job_id: str, step: int, now: float) -> None:  # noqa: F811
    hb = Heartbeat(attempt=1, step=step, checkpoint=CheckpointRef(step=step, uri=f"s3://b/ckpt/step-{step}",
                                                                  world_size=2))
    assert apply_heartbeat(store, job_id, hb, now) is Outcome.OK


def _report(ev: dict, task: str, **fields) -> EvaluationReport:
    return EvaluationReport(evaluation_id=ev["id"], step=ev["step"], task=task, **fields)


def test_a_committed_checkpoint_is_evaluated_as_a_kubernetes_job(store, kube, runner):  # noqa: F811
    job_id = _running_job(store)
    _commit(store, job_id, 40, 2.0)
    runner.reconcile_once(3.0)
    [ev] = job_evaluations(store, job_id)["evaluations"]
    name = job_name(job_id, 40)
    assert ev["state"] == "running" and kube.get(JOBS, name) is not None
    args = kube.get(JOBS, name)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "s3://b/ckpt/step-40" in args and "40" in args
    # The API server keeps a Secret's stringData as base64 data, as a real one does.
    token = base64.b64decode(kube.get(SECRETS, f"{name}-token")["data"][TOKEN_KEY]).decode()
    assert token not in str(kube.get(JOBS, name))
    assert record_report(store, job_id, _report(ev, "ner", status="succeeded", metrics={"f1": 0.61}),
                         "not-the-token", 4.0) is ReportOutcome.FORBIDDEN
    for task, metrics in (("ner", {"f1": 0.61}), ("sentiment", {"accuracy": 0.7})):
        assert record_report(store, job_id, _report(ev, task, status="succeeded", metrics=metrics),
                             token, 4.0) is ReportOutcome.OK

    kube.put(JOBS, {**kube.get(JOBS, name), "status": {"succeeded": 1}})
    runner.reconcile_once(5.0)
    [ev] = job_evaluations(store, job_id)["evaluations"]
    assert ev["state"] == "succeeded"
    assert {t["task"]: t["metrics"] for t in ev["tasks"]} == {"ner": {"f1": 0.61}, "sentiment": {"accuracy": 0.7}}
    assert kube.get(SECRETS, f"{name}-token") is None  # its token is gone with it
    assert record_report(store, job_id, _report(ev, "ner", status="succeeded", metrics={"f1": 0.9}),
                         token, 6.0) is ReportOutcome.FORBIDDEN
    assert store.get_job(job_id)["phase"] == "RUNNING"


def test_a_kubernetes_job_that_fails_before_reporting_fails_its_tasks_not_the_job(store, kube, runner):  # noqa: F811
    job_id = _running_job(store)
    _commit(store, job_id, 40, 2.0)
    runner.reconcile_once(3.0)
    name = job_name(job_id, 40)
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                              "message": "Job has reached the specified backoff limit"}]}
    kube.put(JOBS, {**kube.get(JOBS, name), "status": failed})
    runner.reconcile_once(4.0)
    [ev] = job_evaluations(store, job_id)["evaluations"]
    assert ev["state"] == "failed" and "BackoffLimitExceeded" in ev["message"]
    assert {t["task"]: t["status"] for t in ev["tasks"]} == {"ner": "failed", "sentiment": "failed"}
    assert kube.get(SECRETS, f"{name}-token") is None
    assert any(e["type"] == "evaluation_failed" and "BackoffLimitExceeded" in e["message"]
               for e in store.events(job_id))
    assert store.get_job(job_id)["phase"] == "RUNNING"
