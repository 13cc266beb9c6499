"""A node noticed while an elastic group re-forms is left out at once, on the simulated cluster.

Three 1-CPU spot nodes, a job with ``workers: {min: 1, max: 3}``. A first node is lost without
notice, so the controller starts a new group of two (a noticed loss re-forms in place, with no
start); the moment it starts, a second node of that group gets a 30 s notice. Ray starts no new
worker process on a node under notice and Ray Train waits for its actors without a limit, so before
this was handled the start hung until the second node was gone; if that group had started already,
it loaded, stepped and then shrank again. Now either the start is cut short
(driver/start_guard.py) or the new group leaves before its first step (worker/elastic.py
``leave_if_noticed``): one resize, from three workers to one, from the newest commit, one attempt.
"""

from __future__ import annotations

import pytest
import yaml

from orchestrator.train.checkpoint import CheckpointStore
from tests.manager.procs import terminal
from tests.spot.scenario import until
from tests.spot.elastic_helpers import live_nodes, resizes, spot, submit_at_step
from tests.train.conftest import build_corpus, manifest

pytestmark = pytest.mark.chaos
NOTICE_S = 30.0
MAX_STEPS = 100_000  # out of reach: the test cancels the job once the scenario is through
NODES = 3  # the conftest's cluster: three 1-CPU spot nodes
GROUP_OF_TWO_STARTS = "Attempting to start training worker group of size 2"  # Ray Train's controller log


def _job(tmp_path) -> str:
    path = manifest(tmp_path / "job.yaml", build_corpus(tmp_path / "corpus"), tmp_path / "ckpt", steps=MAX_STEPS,
                    every=4, keep_last=100, name="burst")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["resources"]["workers"] = {"min": 1, "max": 3}
    doc["spec"]["training"].update(global_batch_size=24, micro_batch_size=2)  # every world size 1-3 keeps it
    doc["spec"]["checkpoint"]["preemption_deadline_s"] = NOTICE_S
    doc["spec"]["recovery"] = {"max_restarts": 0, "heartbeat_timeout_s": 300}
    return yaml.safe_dump(doc)


def test_a_node_noticed_while_the_group_re_forms_is_left_out_at_once(server, cluster, tmp_path):
    job_id = submit_at_step(server, cluster, _job(tmp_path), nodes=3, step=6)
    log = tmp_path / "data" / "jobs" / job_id / "attempt-1" / "trainer.log"
    assert GROUP_OF_TWO_STARTS not in log.read_text()

    first, second = [n["node_id"] for n in live_nodes(cluster)][:2]
    spot(cluster, "kill", "--node", first)
    until("the group of two starting", lambda: GROUP_OF_TWO_STARTS in log.read_text(), 120)
    notices = [spot(cluster, "preempt", "--notice", str(NOTICE_S), "--node", second, wait=False)]
    until("a group of one", lambda: any(r["to_world"] == 1 for r in resizes(server, job_id)), 300)

    [resize] = resizes(server, job_id)
    assert (resize["kind"], resize["from_world"], resize["to_world"]) == ("shrink_lost", 3, 1), resize
    committed = [c.step for c in CheckpointStore(str(tmp_path / "ckpt")).committed()]
    assert resize["resumed_from_step"] in committed, resize
    text = log.read_text()
    print("cut short at the start:", "its start ends now" in text,
          "| left before its first step:", "came under notice before its first step" in text, "|", resize)

    for notice in notices:
        assert notice.wait(timeout=120) == 0, notice.stdout.read()
    assert server.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = server.wait(job_id, terminal, 120)
    assert job["phase"] == "CANCELLED" and len(job["attempts"]) == 1, job["message"]
