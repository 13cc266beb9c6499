"""Validate a Kubernetes object: built-in kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail), custom kinds against crd_schemas, and the
pod templates inside a RayJob as real PodTemplateSpecs."""

from __future__ import annotations

from typing import Any, Iterator

import jsonschema
import kubernetes_validate

from tests.k8s.conftest import K8S_VERSION
from tests.k8s.crd_schemas import CUSTOM


def pod_templates(rayjob: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    yield "headGroupSpec", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield f"workerGroupSpecs[{group['groupName']}]", group["template"]


def validate(obj: dict[str, Any]) -> list[str]:
    """Every schema the object was checked against ("<schema>: <kind>/<name>")."""
    key = (obj["apiVersion"], obj["kind"])
    what = f"{obj['kind']}/{obj['metadata']['name']}"
    if key not in CUSTOM:
        version = kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return [f"kubernetes {version} strict: {what}"]
    jsonschema.validate(obj, CUSTOM[key])
    checked = [f"crd_schemas: {what}"]
    if obj["kind"] == "RayJob":
        for where, template in pod_templates(obj):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            version = kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
            checked.append(f"kubernetes {version} strict PodTemplateSpec: {what} {where}")
    return checked
