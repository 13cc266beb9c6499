"""The local backend runs attempts on a named running cluster (a simulated spot cluster's state
directory): the attempt gets its address and token file, never the token; no cluster, no launch."""

import json
import sys
import time

import pytest

from orchestrator import contract
from orchestrator.errors import TemporaryError
from orchestrator.manager.backends.base import LaunchRequest, RunState
from orchestrator.manager.backends.local import LocalBackend

DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


def _request() -> LaunchRequest:
    return LaunchRequest(job_id="spot-job", attempt=1, manifest={"spec": {}}, manager_url="http://127.0.0.1:1",
                         attempt_token="secret-token")


def test_an_attempt_joins_the_named_cluster(tmp_path):
    cluster_dir = tmp_path / "spot"
    cluster_dir.mkdir()
    (cluster_dir / "cluster.json").write_text(json.dumps({"pid": 1, "port": 45678}))
    (cluster_dir / "auth_token").write_text("cluster-token")
    dump = tmp_path / "env.json"
    backend = LocalBackend(tmp_path / "data", trainer_command=[sys.executable, "-c", DUMP_ENV, str(dump)],
                           ray_cluster_dir=cluster_dir)
    handle = backend.launch(_request())
    deadline = time.monotonic() + 60
    while backend.poll("spot-job", 1, handle).state is RunState.RUNNING:
        assert time.monotonic() < deadline, "the stand-in trainer never exited"
        time.sleep(0.1)
    env = json.loads(dump.read_text())
    assert env[contract.ENV_RAY_ADDRESS] == "127.0.0.1:45678"
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(cluster_dir / "auth_token")
    assert "cluster-token" not in json.dumps(env)


def test_no_running_cluster_is_a_temporary_launch_failure(tmp_path):
    backend = LocalBackend(tmp_path / "data", trainer_command=[sys.executable, "-c", "pass"],
                           ray_cluster_dir=tmp_path / "nothing-here")
    with pytest.raises(TemporaryError, match="bertctl spot up"):
        backend.launch(_request())
