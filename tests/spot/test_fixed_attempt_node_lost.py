"""A fixed-size attempt whose node is killed without notice ends as ``node_lost``, not as a crash.

Two 1-CPU spot nodes, a job with ``workers: 2`` (fixed) and one restart. A spot node SIGKILLed
mid-run makes the surviving worker's collective fail at once, before Ray declares the node dead;
the driver waits for that verdict and ends the attempt as ``node_lost`` (exit 69, retried), naming
the node (driver/node_loss.py), and the manager relaunches it. Before, the attempt ended as
``infrastructure``: the record showed a crash where capacity went away, and the mean time between
losses never counted it. The job is cancelled once the relaunch is decided.
"""

from __future__ import annotations

import pytest
import yaml

from orchestrator.contract import ExitCode
from tests.manager.procs import terminal
from tests.spot.elastic_helpers import spot, submit_at_step
from tests.train.conftest import build_corpus, manifest

pytestmark = pytest.mark.chaos
NODES = 2  # the conftest's cluster: two 1-CPU spot nodes
MAX_STEPS = 100_000  # out of reach: the test cancels the job once the relaunch is decided


def _job(tmp_path) -> str:
    path = manifest(tmp_path / "job.yaml", build_corpus(tmp_path / "corpus"), tmp_path / "ckpt", steps=MAX_STEPS,
                    every=4, keep_last=100, name="fixed")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["recovery"] = {"max_restarts": 1, "heartbeat_timeout_s": 300}
    return yaml.safe_dump(doc)


def test_a_fixed_attempt_that_loses_a_node_ends_as_node_lost_and_is_relaunched(server, cluster, tmp_path):
    job_id = submit_at_step(server, cluster, _job(tmp_path), nodes=2, step=2)

    spot(cluster, "kill")
    job = server.wait(job_id, lambda j: j["attempts"][0]["state"] == "ended", 180)
    first = job["attempts"][0]
    assert (first["end_reason"], first["exit_code"]) == ("node_lost", ExitCode.INFRASTRUCTURE), first
    messages = [e["message"] for e in server.events(job_id)]
    said = next((m for m in messages if "attempt 1 reported failed (node_lost)" in m), "")
    assert "died under the attempt" in said, messages  # the trainer's final word names the node
    assert any("attempt 1 ended: node_lost" in m for m in messages), messages

    server.wait(job_id, lambda j: j["restarts_used"] == 1, 120)  # relaunched: a temporary reason
    assert server.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert server.wait(job_id, terminal, 180)["phase"] == "CANCELLED"
