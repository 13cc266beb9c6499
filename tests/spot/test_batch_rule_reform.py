"""An elastic range whose batch rule skips a count, on the simulated spot cluster, through a real manager.

Four 1-CPU spot nodes and a job with ``workers: {min: 1, max: 4}``, global batch 8, micro batch 2:
1, 2 and 4 workers keep the global batch, 3 do not. A node of the group of 4 taken with a notice
leaves 3 survivors: 2 go on in place in their own processes and the third is released, since no
group of 3 may train; no step is lost. A notice on a node of that group of 2, while the released
node sits idle: rather than go on alone in place, the group re-forms with new processes on the
survivor and the released node (nothing measured yet prices a re-form with new processes above one
in place, so taking an idle node in pays), again from the checkpoint taken inside the notice. One
attempt throughout, and every step consumed the uninterrupted stream's samples (`bertctl audit`).
"""

from __future__ import annotations

import re

import pytest

from tests.manager.procs import terminal
from tests.spot.elastic_helpers import (
    bertctl, elastic_job, live_nodes, resizes, spot, submit_at_step, trainer_log,
    wait_until, worker_pids,
)

pytestmark = pytest.mark.chaos
NOTICE_S = 30.0
NODES = 4


def _nth_resize(server, job_id: str, n: int) -> dict:
    return wait_until(f"resize {n}", lambda: len(resizes(server, job_id)) >= n and resizes(server, job_id)[n - 1])


def _released_node(tmp_path, job_id: str) -> str:
    found = re.findall(r"leaves node ([0-9a-f]+) \(released: the batch rule\)", trainer_log(tmp_path, job_id))
    assert len(found) == 1, f"one rank released by the batch rule, found {found}"
    return found[0]


def test_survivors_beyond_the_batch_rule_are_released_and_a_later_notice_takes_their_node_in(
        server, cluster, tmp_path):
    job_id = submit_at_step(server, cluster, elastic_job(tmp_path, {"min": 1, "max": 4}, 8, NOTICE_S),
                            nodes=NODES, step=6)
    workers_before = worker_pids(tmp_path, job_id)
    assert len(workers_before) == 4

    spot(cluster, "preempt", "--notice", str(NOTICE_S), wait=False)
    shrink = _nth_resize(server, job_id, 1)
    assert (shrink["kind"], shrink["from_world"], shrink["to_world"]) == ("shrink_notice", 4, 2), shrink
    assert shrink["steps_lost"] == 0 and shrink["last_step"] == shrink["resumed_from_step"], shrink
    assert worker_pids(tmp_path, job_id) == workers_before, "the two kept re-formed in their own processes"
    released = _released_node(tmp_path, job_id)

    # The noticed node is still draining; of the three live ones, take one the group of 2 runs on.
    in_group = [n["node_id"] for n in live_nodes(cluster) if n["node_id"] != released]
    assert len(in_group) == 2, (in_group, released)
    spot(cluster, "preempt", "--notice", str(NOTICE_S), "--node", in_group[0], wait=False)
    wider = _nth_resize(server, job_id, 2)
    assert (wider["kind"], wider["from_world"], wider["to_world"]) == ("shrink_notice", 2, 2), wider
    assert wider["steps_lost"] == 0 and wider["last_step"] == wider["resumed_from_step"], wider
    assert "re-forms with new processes, taking 1 idle worker(s) in" in trainer_log(tmp_path, job_id)
    assert len(worker_pids(tmp_path, job_id) - workers_before) == 2, "a group of 2 in new processes"

    wait_until("steps on the wider group", lambda: server.job(job_id)["step"] >= wider["resumed_from_step"] + 3)
    assert server.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = server.wait(job_id, terminal, 120)
    assert job["phase"] == "CANCELLED", job["message"]
    assert len(job["attempts"]) == 1 and job["restarts_used"] == 0, "no manager relaunch"
    audit = bertctl("audit", job_id, "--url", server.url)
    assert audit.returncode == 0, audit.stdout + audit.stderr
