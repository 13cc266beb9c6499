"""The simulated spot pool's launch accounting, without a cluster (the provider is built as Ray's
autoscaler builds it; no node is started)."""

import json

import pytest

from orchestrator.spot.pool import EVENTS_FILE, write_capacity
from orchestrator.spot.provider import InsufficientCapacity, SpotNodeProvider


@pytest.fixture
def provider(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    write_capacity(tmp_path, {"spot-cpu": 2})
    return SpotNodeProvider({"state_dir": str(tmp_path), "gcs_address": "127.0.0.1:1"}, "sim")


def _events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / EVENTS_FILE).read_text().splitlines()]


def test_a_launch_larger_than_the_pools_room_is_fulfilled_in_part(provider, tmp_path):
    """A group that asks for 4 workers while the pool holds room for 2 gets 2 nodes (before, the
    whole request failed at every retry and the attempt starved with nodes to be had)."""
    assert provider._reserve("spot-cpu", 4) == 2
    with pytest.raises(InsufficientCapacity):
        provider._reserve("spot-cpu", 1)  # the 2 launched so far fill the pool
    events = [(e["kind"], e.get("count"), e.get("granted")) for e in _events(tmp_path)]
    assert events == [("no_capacity", None, 2), ("requested", 2, None), ("no_capacity", None, 0)]


def test_a_launch_within_the_room_is_fulfilled_whole(provider, tmp_path):
    assert provider._reserve("spot-cpu", 1) == 1
    assert provider._reserve("spot-cpu", 1) == 1
    assert [e["kind"] for e in _events(tmp_path)] == ["requested", "requested"]
