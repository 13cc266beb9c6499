"""Elastic inside an attempt, on the simulated spot cluster, through a real manager.

Three 1-CPU spot nodes (the head holds no CPU, so workers run only on spot nodes), one of them
taken before the job starts, and a job with ``workers: {min: 1, max: 3}``: it forms 2 workers.
Capacity back -> it grows to three workers at its next checkpoint; a node taken with a 30 s notice
-> the two other workers re-form in place and go on from the checkpoint taken inside the notice
(zero steps lost, the same processes); a node SIGKILLed without notice -> it goes on with one
worker from its newest committed checkpoint. One attempt throughout (no manager relaunch); every
step consumed the uninterrupted stream's samples (`bertctl audit`); each resize is an event with
its cost, counted in the goodput and shown by `bertctl status`. The job is cancelled once the
scenario is through (its max_steps is out of reach), so the machine's speed decides nothing.

The grow comes first because it is the one resize this machine's speed could decide: simulated
nodes share its two cores, so a group of 3 steps slower than one of 2, and once the attempt has
measured that it no longer grows from 2 to 3 (rules.speedup). Before any group of 3 has run, it
grows as it would on nodes of their own.
"""

from __future__ import annotations

import pytest

from orchestrator.train.checkpoint import CheckpointStore
from tests.manager.procs import terminal
from tests.spot.elastic_helpers import (
    bertctl, elastic_job, resized, spot, submit_at_step, wait_until, worker_pids,
)

pytestmark = pytest.mark.chaos
NOTICE_S = 30.0
NODES = 3


def test_an_elastic_attempt_grows_shrinks_and_survives_a_kill_without_a_relaunch(server, cluster, tmp_path):
    spot(cluster, "kill")
    job_id = submit_at_step(server, cluster, elastic_job(tmp_path, {"min": 1, "max": 3}, 12, NOTICE_S),
                            nodes=NODES - 1, step=6)  # global batch 12: every world size 1-3 keeps it

    spot(cluster, "restore", "--type", "spot-cpu")
    grow = resized(server, job_id, "grow")
    assert (grow["from_world"], grow["to_world"]) == (2, 3) and grow["steps_lost"] == 0, grow
    assert grow["resumed_from_step"] % 4 == 0, "a grow waits for a checkpoint boundary"
    wait_until("two steps on three workers", lambda: server.job(job_id)["step"] >= grow["resumed_from_step"] + 2)
    workers_before = worker_pids(tmp_path, job_id)

    notice = spot(cluster, "preempt", "--notice", str(NOTICE_S), wait=False)
    shrink = resized(server, job_id, "shrink_notice")
    assert (shrink["from_world"], shrink["to_world"]) == (3, 2)
    assert shrink["last_step"] == shrink["resumed_from_step"] and shrink["steps_lost"] == 0, shrink
    parts = [shrink[k] for k in ("detect_s", "reform_s", "load_s", "first_step_s")]
    assert None not in parts and abs(sum(parts) - shrink["pause_s"]) < 0.01, "the pause is the sum of its parts"
    assert worker_pids(tmp_path, job_id) == workers_before, "the survivors re-formed in their own processes"

    assert notice.wait(timeout=120) == 0, notice.stdout.read()  # it returns once the node is gone
    wait_until("two steps on two workers", lambda: server.job(job_id)["step"] >= shrink["resumed_from_step"] + 2)
    spot(cluster, "kill")
    lost = resized(server, job_id, "shrink_lost")
    assert (lost["from_world"], lost["to_world"]) == (2, 1), lost
    committed = [c.step for c in CheckpointStore(str(tmp_path / "ckpt")).committed()]
    assert lost["resumed_from_step"] in committed and lost["resumed_from_step"] >= shrink["resumed_from_step"]

    wait_until("steps on the survivors", lambda: server.job(job_id)["step"] >= lost["resumed_from_step"] + 3)
    assert server.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = server.wait(job_id, terminal, 120)
    assert job["phase"] == "CANCELLED", job["message"]
    assert len(job["attempts"]) == 1 and job["restarts_used"] == 0, "no manager relaunch"
    assert job["goodput"]["resizes"] == 3 and job["goodput"]["resize_s"] > 0
    audit = bertctl("audit", job_id, "--url", server.url)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    status = bertctl("status", job_id, "--url", server.url)
    assert status.returncode == 0 and "resizes 3" in status.stdout, status.stdout + status.stderr
