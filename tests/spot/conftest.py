"""Fixtures shared by the simulated-cluster tests: each module brings its own ``cluster``."""

from __future__ import annotations

import pytest

from tests.manager.procs import ServerProcess, free_port


@pytest.fixture
def server(tmp_path, cluster):
    """A real manager process whose local backend joins the module's simulated cluster."""
    srv = ServerProcess(tmp_path / "data", free_port(), extra_env={"BERTCTL_RAY_CLUSTER_DIR": str(cluster.state_dir)})
    srv.start()
    yield srv
    srv.stop()
