"""The raylet health probe that tells a crash from a node being lost, against a real Ray node."""

from __future__ import annotations

import socket

import pytest

from orchestrator.train.driver import elastic, node_probe

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the with ends: nothing listens there


def test_a_live_raylet_answers_and_a_gone_one_does_not():
    import ray

    [node] = [n for n in ray.nodes() if n["Alive"]]
    assert node_probe.raylet_serving(node["NodeManagerAddress"], node["NodeManagerPort"])
    assert not node_probe.raylet_serving("127.0.0.1", _closed_port())
    assert node_probe.every_node_answers()


def test_a_draining_node_counts_as_not_answering(monkeypatch):
    import ray

    [node] = [n for n in ray.nodes() if n["Alive"]]
    monkeypatch.setattr(elastic, "draining_nodes", lambda: {node["NodeID"]})
    assert not node_probe.every_node_answers()
