"""Rendering: every object of every example job validates; the RayJob has what spot training needs;
no credential value ever appears in a rendered object or in `bertctl render` output."""

from __future__ import annotations

import copy
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.manager.backends import kuberay_render as render
from orchestrator.spec import load_manifest, parse_manifest
from tests.k8s.conftest import ROOT, manifest
from tests.k8s.validation import pod_templates, validate

EXAMPLES = sorted((ROOT / "jobs").glob("k8s-*.yaml"))
URL = "http://bertctl-manager.bertctl.svc:8470"
TOKEN = "tok_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
# Values that live in the user's credentials Secret: render only ever names the Secret.
S3_SECRET_VALUES = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"}


def all_objects(path, attempt: int = 1) -> list[dict]:
    job = load_manifest(path)
    objs = render.render_attempt(job, job.metadata.name, attempt, URL, mtbp_s=3600.0)
    return objs + [render.attempt_secret(job, job.metadata.name, attempt, TOKEN)]


def rayjob_of(path, attempt: int = 1) -> dict:
    return next(o for o in all_objects(path, attempt) if o["kind"] == "RayJob")


def test_there_are_several_examples():
    assert {p.name for p in EXAMPLES} >= {"k8s-bert-base-spot.yaml", "k8s-kueue.yaml", "k8s-irsa.yaml"}


@pytest.mark.parametrize("attempt", [1, 7])
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_rendered_object_validates(path, attempt):
    checked = [c for obj in all_objects(path, attempt) for c in validate(obj)]
    kinds = " ".join(checked)
    assert "ConfigMap/" in kinds and "Secret/" in kinds and "RayJob/" in kinds
    assert sum("PodTemplateSpec" in c for c in checked) == 2  # head + one worker group


def test_validation_catches_mistakes():
    bad = rayjob_of(EXAMPLES[0])
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        validate(bad)
    bad = rayjob_of(EXAMPLES[0])
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["lifecyle"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="lifecyle"):
        validate(bad)


def test_spot_elastic_gpu_workers():
    rj = rayjob_of(ROOT / "jobs/k8s-bert-base-spot.yaml")
    spec, cluster = rj["spec"], rj["spec"]["rayClusterSpec"]
    assert (spec["backoffLimit"], spec["shutdownAfterJobFinishes"], spec["ttlSecondsAfterFinished"]) == (0, True, 300)
    assert spec["entrypoint"] == "python -m orchestrator.train --manifest /etc/bertctl/manifest.yaml"
    assert cluster["enableInTreeAutoscaling"] is True
    group = cluster["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 4)
    pod = group["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["resources"]["requests"] == {"cpu": "8", "memory": "60Gi", "nvidia.com/gpu": "1"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]} in terms[0]["matchExpressions"]
    assert len(terms) == len(render.SPOT_LABELS)  # ORed: one per provider's spot label
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == "bertctl-training"
    assert pod["nodeSelector"] == {"karpenter.k8s.aws/instance-gpu-name": "a100"}
    # The notice: preStop touches the file the trainer watches, then holds the pod past the deadline.
    deadline = 90
    assert pod["terminationGracePeriodSeconds"] > deadline
    script = worker["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert f"touch {render.NOTICE_FILE}" in script and script.endswith(f"sleep {deadline}")
    assert {"name": "BERTCTL_PREEMPTION_NOTICE_FILE", "value": render.NOTICE_FILE} in worker["env"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]
    assert worker["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]


def test_head_is_on_demand_without_gpus_and_not_for_training():
    head_group = rayjob_of(ROOT / "jobs/k8s-bert-base-spot.yaml")["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head_group["rayStartParams"] == {"num-cpus": "0"}
    pod = head_group["template"]["spec"]
    assert "nvidia.com/gpu" not in str(pod["containers"][0]["resources"])
    exprs = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert all(e["operator"] == "NotIn" for e in exprs["matchExpressions"])
    assert "tolerations" not in pod


def test_kueue_queue_label_and_suspend():
    rj = rayjob_of(ROOT / "jobs/k8s-kueue.yaml")
    assert rj["metadata"]["labels"][render.KUEUE_QUEUE_LABEL] == "research"
    assert rj["spec"]["suspend"] is True
    assert "suspend" not in rayjob_of(ROOT / "jobs/k8s-bert-base-spot.yaml")["spec"]


def test_irsa_service_account_and_on_demand_workers():
    rj = rayjob_of(ROOT / "jobs/k8s-irsa.yaml")
    for _, template in pod_templates(rj):
        assert template["spec"]["serviceAccountName"] == "bertctl-trainer"
        assert "envFrom" not in template["spec"]["containers"][0]
    worker = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "affinity" not in worker  # spot: false
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == {"karpenter.sh/capacity-type": "on-demand"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_no_credential_value_in_rendered_objects(path):
    objs = render.render_attempt(load_manifest(path), "job-x", 2, URL)
    text = render.to_yaml(objs)
    for value in [TOKEN, *S3_SECRET_VALUES.values()]:
        assert value not in text
    env = [e for o in objs if o["kind"] == "RayJob" for _, t in pod_templates(o) for e in t["spec"]["containers"][0]["env"]]
    token_env = [e for e in env if e["name"] == "BERTCTL_ATTEMPT_TOKEN"]
    assert token_env and all(set(e) == {"name", "valueFrom"} for e in token_env)  # by reference only
    # The one object that holds the token is the Secret, which render never returns.
    secret = render.attempt_secret(load_manifest(path), "job-x", 2, TOKEN)
    assert secret["stringData"] == {"token": TOKEN} and secret["kind"] not in {o["kind"] for o in objs}


def test_names_are_short_valid_and_distinct():
    long_id = "Job_" + "x" * 80
    names = [render.rayjob_name(long_id, 12), render.secret_name(long_id, 12), render.configmap_name(long_id, 12)]
    assert all(len(n) <= 63 for n in names) and len(names[0]) <= render.MAX_NAME
    assert render.slug("a_b") != render.slug("a-b-") and render.slug("job-1") == "job-1"
    assert render.slug("42-x")[0].isalpha() and render.slug("42-x") != render.slug("j-42-x")
    job = parse_manifest(manifest())
    for job_id in (long_id, "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b", "7"):
        rj = render.render_rayjob(job, job_id, 12, URL)
        assert validate(rj)  # crd_schemas: DNS-1035 RayJob name of at most 47 characters


def test_cli_render_prints_objects_by_reference():
    result = CliRunner().invoke(app, ["render", str(ROOT / "jobs/k8s-kueue.yaml"), "--attempt", "3"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    assert docs[1]["metadata"]["name"] == "bert-small-kueue-a3"
    assert "Secret research/bert-small-kueue-a3-token" in result.output.splitlines()[0]
    assert "stringData" not in result.output and "kind: Secret" not in result.output


def test_cli_render_bad_manifest_exits_2_naming_fields(tmp_path):
    bad = copy.deepcopy(manifest())
    bad["spec"]["kubernetes"]["imagee"] = "x"
    bad["spec"]["resources"]["memory_per_worker"] = "lots"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "render", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "spec.kubernetes.imagee" in out.stderr and "spec.resources.memory_per_worker" in out.stderr
    assert out.stdout == ""


def test_no_manager_secret_reaches_a_rendered_pod(monkeypatch):
    """Rendering reads nothing of the manager's environment: pods get the contract's variables by
    value, the attempt token by secretKeyRef, and cloud credentials only through envFrom."""
    from orchestrator import contract

    secrets = {"PGPASSWORD": "pg-secret-1", "KUBECONFIG": "/home/op/.kube/secret-config",
               "BERTCTL_ADMIN_TOKEN": "admin-secret-" + "a" * 20, "BERTCTL_DATABASE_URL": "postgresql://u:db-s@h/d",
               "SECRET_X": "made-up-secret", **S3_SECRET_VALUES}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    for path in EXAMPLES:
        text = yaml.safe_dump_all(all_objects(path)[:-1])  # the attempt Secret holds the token, by design
        assert not [v for v in secrets.values() if v in text], path.name
        for _, pod in pod_templates(rayjob_of(path)):
            for c in pod["spec"]["containers"]:
                names = {e["name"] for e in c["env"]}
                assert names <= contract.ATTEMPT_ENV | contract.INHERITED_BERTCTL_ENV, (path.name, names)
                assert all("value" in e or "secretKeyRef" in e.get("valueFrom", {}) for e in c["env"])
