"""spec.evaluation on KubeRay: each evaluation is a batch/v1 Job with the trainer image and its own
resources, valid against the official Kubernetes schema, its token only in a Secret; the launcher
creates, polls and deletes them through the fake API server."""

from __future__ import annotations

import copy
import json

import pytest

from orchestrator.manager.backends.evaluation_kube import (KubeEvaluationLauncher, evaluation_secret, job_name,
                                                           render_evaluation_job)
from orchestrator.manager.backends.evaluation_local import EvaluationRequest
from orchestrator.spec import parse_manifest
from tests.k8s.conftest import MANIFEST, NS, SECRETS
from tests.k8s.validation import validate

TOKEN = "evaluation-token-" + "x" * 30
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
EVALUATION = {"every_checkpoints": 2, "resources": {"cpus": 2, "memory": "6Gi", "gpus": 1}, "tasks": [
    {"name": "ner", "task": "token-classification", "train": "s3://bucket/ner/train.txt",
     "validation": "s3://bucket/ner/valid.txt", "budget": {"max_seconds": 600, "max_train_examples": 5000}},
    {"name": "sentiment", "task": "classification", "train": "s3://bucket/rt/train.csv",
     "validation": "s3://bucket/rt/valid.csv", "budget": {"max_seconds": 300}}]}


def _request(**change) -> tuple[EvaluationRequest, object]:
    manifest = copy.deepcopy(MANIFEST)
    manifest["spec"]["evaluation"] = EVALUATION
    manifest["spec"]["kubernetes"].update(change)
    job = parse_manifest(manifest)
    req = EvaluationRequest(job_id="bert-k8s-3f2a1c", evaluation_id=7, step=400,
                            checkpoint_uri="s3://bucket/ckpt/step-00000400",
                            evaluation=job.to_dict()["spec"]["evaluation"], manifest=job.to_dict(),
                            manager_url="http://bertctl-manager.bertctl:8470", token=TOKEN)
    return req, job


def test_the_job_and_its_secret_validate_against_kubernetes():
    req, job = _request(queue="research", service_account="trainer")
    objects = [evaluation_secret(job, req), render_evaluation_job(job, req, req.manager_url)]
    checked = [line for o in objects for line in validate(o)]
    assert any("Job/" in c for c in checked) and any("Secret/" in c for c in checked)


def test_the_job_runs_the_evaluation_with_its_own_resources_and_no_token():
    req, job = _request(queue="research")
    obj = render_evaluation_job(job, req, req.manager_url)
    assert TOKEN not in json.dumps(obj)
    pod = obj["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "registry.example/bertctl:1"
    assert c["command"] == ["python", "-m", "orchestrator.finetune.evaluate"]
    args = dict(zip(c["args"][::2], c["args"][1::2]))
    assert args["--step"] == "400" and args["--checkpoint"] == "s3://bucket/ckpt/step-00000400"
    assert [t["name"] for t in json.loads(args["--tasks-json"])] == ["ner", "sentiment"]
    assert args["--threads"] == "2" and args["--device"] == "cuda"
    env = {e["name"]: e for e in c["env"]}
    assert env["BERTCTL_EVALUATION_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == f"{obj['metadata']['name']}-token"
    assert env["OMP_NUM_THREADS"]["value"] == "2"
    assert c["resources"]["requests"] == {"cpu": "2", "memory": "6Gi", "nvidia.com/gpu": "1"}
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert obj["spec"]["backoffLimit"] == 0 and obj["spec"]["activeDeadlineSeconds"] == 900 + 300
    assert pod["restartPolicy"] == "Never" and obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    assert evaluation_secret(job, req)["stringData"] == {"token": TOKEN}


def test_names_stay_valid_for_long_job_ids():
    assert len(job_name("a" * 80, 10**9)) <= 52
    assert job_name("bert-k8s-3f2a1c", 400) != job_name("bert-k8s-3f2a1c", 600)


@pytest.fixture
def launcher(api_client):
    return KubeEvaluationLauncher(api_client=api_client, manager_url="http://bertctl-manager.bertctl:8470")


def test_launch_poll_and_terminate_through_the_api_server(kube, launcher):
    req, _ = _request()
    handle = launcher.launch(req)
    name = job_name(req.job_id, req.step)
    assert handle == f"{NS}/{name}" and kube.get(JOBS, name) is not None and kube.get(SECRETS, f"{name}-token")
    assert launcher.poll(req.job_id, req.step, handle).running
    stored = kube.get(JOBS, name)
    kube.put(JOBS, {**stored, "status": {"conditions": [{"type": "Failed", "status": "True",
                                                          "reason": "DeadlineExceeded", "message": "too slow"}]}})
    failed = launcher.poll(req.job_id, req.step, handle)
    assert not failed.running and "DeadlineExceeded" in failed.message
    kube.put(JOBS, {**stored, "status": {"succeeded": 1}})
    assert launcher.poll(req.job_id, req.step, handle).exit_code == 0
    launcher.terminate(req.job_id, req.step, handle, 5.0)
    assert kube.get(SECRETS, f"{name}-token") is None
    assert not launcher.poll(req.job_id, req.step, handle).running
