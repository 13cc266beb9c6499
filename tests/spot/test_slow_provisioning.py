"""An attempt on a cluster whose nodes take longer to come up than the heartbeat timeout.

The simulated spot cluster starts with no worker node and provisions each one 25 s after Ray's
autoscaler asks for it, while the job's ``heartbeat_timeout_s`` is 10 s. The attempt says what it
waits for ('starting' heartbeats), and the manager holds it to ``startup_timeout_s`` until its
first step, not to the heartbeat timeout: the job succeeds in its first attempt.
"""

from __future__ import annotations

import pytest
import yaml

from orchestrator.spot.config import parse_config
from orchestrator.spot.sim_cluster import SimCluster, session_members
from tests.manager.procs import ServerProcess, free_port, terminal
from tests.train.conftest import build_corpus, manifest

pytestmark = pytest.mark.chaos
PROVISIONING_S = 25.0
HEARTBEAT_TIMEOUT_S = 10.0
CONFIG = {"head": {"resources": {"CPU": 0}}, "provisioning_delay_s": PROVISIONING_S, "idle_timeout_s": 600,
          "node_types": {"spot-cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 1}}}


@pytest.fixture
def server(tmp_path):
    sim = SimCluster(tmp_path / "spot", parse_config(CONFIG))
    sim.up()
    leader = sim.state()["pid"]
    srv = ServerProcess(tmp_path / "data", free_port(), extra_env={"BERTCTL_RAY_CLUSTER_DIR": str(sim.state_dir)})
    try:
        yield srv.start(), sim
    finally:
        srv.stop()
        sim.down()
    assert session_members(leader) == [], "the cluster's processes outlived down()"


def test_nodes_slower_than_the_heartbeat_timeout_do_not_kill_the_attempt(server, tmp_path):
    srv, sim = server
    path = manifest(tmp_path / "job.yaml", build_corpus(tmp_path / "corpus"), tmp_path / "ckpt", steps=4, every=4,
                    workers=1, name="slow-nodes")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["recovery"] = {"max_restarts": 0, "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S, "startup_timeout_s": 600}
    doc["spec"]["checkpoint"]["preemption_deadline_s"] = 5
    r = srv.http.post("/v1/jobs", content=yaml.safe_dump(doc))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    job = srv.wait(job_id, terminal, 600)
    assert job["phase"] == "SUCCEEDED", job["message"]
    assert len(job["attempts"]) == 1, "the attempt waiting for nodes was never killed"
    events = srv.events(job_id)
    waiting = next(e for e in events if e["type"] == "starting" and "waiting for 1 worker" in e["message"])
    running = next(e for e in events if e["type"] == "running")
    joined = [e for e in sim.events() if e["kind"] == "joined"]
    assert joined, "the worker ran on a provisioned spot node"
    assert running["ts"] - waiting["ts"] > HEARTBEAT_TIMEOUT_S, "the wait outlasted the heartbeat timeout"
