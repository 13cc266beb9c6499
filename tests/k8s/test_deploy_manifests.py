"""Every file under k8s/ and the kustomize build of the base and both overlays validate.

The build uses the kustomize built into kubectl (`kubectl kustomize`, offline). Every YAML
document under k8s/ (resources and patches alike) is also validated on its own.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.k8s.conftest import ROOT
from tests.k8s.validation import validate

K8S = ROOT / "k8s"
TARGETS = ["base", "overlays/aws", "overlays/gke"]
FILES = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def build(target: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to build k8s/; install kubectl"
    out = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(K8S)) for p in FILES])
def test_every_file_validates(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        assert validate(doc)


@pytest.mark.parametrize("target", TARGETS)
def test_kustomize_build_validates(target):
    objs = build(target)
    for obj in objs:
        assert validate(obj)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "Deployment", "Service",
            "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    extra = {"base": set(), "overlays/aws": {"NodePool"}, "overlays/gke": {"ContainerNodePool"}}[target]
    assert extra <= kinds


def test_manager_rbac_is_least_privilege():
    objs = {(o["kind"], o["metadata"]["name"]): o for o in build("base")}
    rules = objs[("Role", "bertctl-manager")]["rules"]
    grants = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert grants[("ray.io", "rayjobs")] == {"create", "get", "list", "watch", "delete"}
    assert grants[("", "pods")] == grants[("", "events")] == {"get", "list", "watch"}
    assert all("*" not in verbs for verbs in grants.values()) and ("", "pods/exec") not in grants
    node_rules = objs[("ClusterRole", "bertctl-manager-node-reader")]["rules"]
    assert node_rules == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]


def test_manager_deployment_is_hardened_and_takes_secrets_by_reference():
    dep = next(o for o in build("base") if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["readinessProbe"] and c["livenessProbe"] and c["resources"]["requests"]
    db = next(e for e in c["env"] if e["name"] == "BERTCTL_DATABASE_URL")
    assert db == {"name": "BERTCTL_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "bertctl-database", "key": "url"}}}
    assert {"name": "admin-token", "secret": {"secretName": "bertctl-admin"}} in pod["volumes"]
    text = "".join(p.read_text() for p in K8S.rglob("*.yaml"))
    assert "kind: Secret" not in text and "stringData" not in text


def test_overlays_bind_cloud_identity():
    for target, key in (("overlays/aws", "eks.amazonaws.com/role-arn"), ("overlays/gke", "iam.gke.io/gcp-service-account")):
        sa = next(o for o in build(target) if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "bertctl-trainer")
        assert key in sa["metadata"]["annotations"]


def test_the_manager_runs_two_replicas_that_a_drain_never_takes_together():
    objs = build("base")
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "bertctl-manager")
    pdb = next(o for o in objs if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == "bertctl-manager")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "an update keeps one replica serving"
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the budget covers the manager's pods"
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}, "replicas on different nodes"
    service = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "bertctl-manager")
    assert service["spec"]["selector"].items() <= labels.items(), "trainers report to every replica through the Service"
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BERTCTL_MANAGER_URL"] == "http://bertctl-manager.bertctl.svc:8470"
