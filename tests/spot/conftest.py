"""Fixtures shared by the simulated-cluster tests. ``cluster`` brings up the module's ``NODES``
spot nodes; a module that needs another cluster defines its own ``cluster``."""

from __future__ import annotations

import pytest

from tests.manager.procs import ServerProcess, free_port
from tests.spot.elastic_helpers import running_cluster


@pytest.fixture
def cluster(request, tmp_path):
    with running_cluster(tmp_path, request.module.NODES) as sim:
        yield sim


@pytest.fixture
def server(tmp_path, cluster):
    """A real manager process whose local backend joins the module's simulated cluster."""
    srv = ServerProcess(tmp_path / "data", free_port(), extra_env={"BERTCTL_RAY_CLUSTER_DIR": str(cluster.state_dir)})
    srv.start()
    yield srv
    srv.stop()
