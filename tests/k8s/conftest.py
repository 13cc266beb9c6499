"""Fixtures for the Kubernetes tests: a fake API server on loopback and a backend talking to it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from orchestrator.manager.backends.kuberay import KubeRayBackend
from tests.k8s.fake_kube import FakeKube

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33"  # the oldest Kubernetes release still in upstream support at the time of writing
NS = "train"
RAYJOBS = f"/apis/ray.io/v1/namespaces/{NS}/rayjobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
EVENTS = f"/api/v1/namespaces/{NS}/events"
NODES = "/api/v1/nodes"

MANIFEST: dict[str, Any] = {
    "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": "bert-k8s"},
    "spec": {
        "model": {"preset": "bert-tiny"},
        "data": {"shards": "s3://bucket/shards"},
        "training": {"max_steps": 10, "global_batch_size": 16, "micro_batch_size": 4},
        "resources": {"workers": {"min": 1, "max": 2}, "gpus_per_worker": 1, "cpus_per_worker": 4,
                      "memory_per_worker": "16Gi"},
        "checkpoint": {"uri": "s3://bucket/ckpt", "preemption_deadline_s": 40},
        "kubernetes": {"namespace": NS, "image": "registry.example/bertctl:1", "credentials_secret": "s3-creds"},
    },
}


def manifest(**kubernetes: Any) -> dict[str, Any]:
    m = copy.deepcopy(MANIFEST)
    m["spec"]["kubernetes"].update(kubernetes)
    return m


@pytest.fixture
def kube():
    fake = FakeKube().start()
    yield fake
    fake.stop()


@pytest.fixture
def api_client(kube):
    api = client.ApiClient(client.Configuration(host=kube.url))
    yield api
    api.close()


@pytest.fixture
def backend(api_client):
    return KubeRayBackend(api_client=api_client, poll_interval_s=0.0, delete_timeout_s=5.0, sleep=lambda s: None)
