"""Fixtures shared by the simulated-cluster tests. ``cluster`` brings up the module's ``NODES``
spot nodes; a module that needs another cluster defines its own ``cluster``."""

from __future__ import annotations

import pytest

from orchestrator.spot.sim_cluster import session_members
from tests.manager.procs import ServerProcess, free_port
from tests.spot.elastic_helpers import cluster_with_nodes


@pytest.fixture
def cluster(request, tmp_path):
    """The cluster with the module's NODES up, taken down afterwards with nothing of it left running."""
    sim = cluster_with_nodes(tmp_path, request.module.NODES)
    leader = sim.state()["pid"]
    yield sim
    sim.down()
    assert session_members(leader) == [], "the cluster's processes outlived down()"


@pytest.fixture
def server(tmp_path, cluster):
    """A real manager process whose local backend joins the module's simulated cluster."""
    srv = ServerProcess(tmp_path / "data", free_port(), extra_env={"BERTCTL_RAY_CLUSTER_DIR": str(cluster.state_dir)})
    srv.start()
    yield srv
    srv.stop()
