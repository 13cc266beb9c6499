"""Elastic inside an attempt, on the simulated spot cluster, through a real manager.

Three 1-CPU spot nodes (the head holds no CPU, so workers run only on spot nodes), a job with
``workers: {min: 1, max: 3}``. Mid-run: a node taken with a 30 s notice -> the two other workers
re-form in place and go on from the checkpoint taken inside the notice (zero steps lost, the same
processes); capacity back -> it grows to three workers at its next checkpoint; a node SIGKILLed
without notice -> it goes on with two workers from its newest committed checkpoint. One attempt throughout (no manager relaunch); every step
consumed the uninterrupted stream's samples (`bertctl audit`); each resize is an event with its
cost, counted in the goodput and shown by `bertctl status`. The job is cancelled once the scenario
is through (its max_steps is out of reach), so the machine's speed decides nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from orchestrator.spot.config import parse_config
from orchestrator.spot.sim_cluster import SimCluster, session_members
from orchestrator.train.checkpoint import CheckpointStore
from tests.manager.procs import ADMIN, terminal
from tests.spot.scenario import until
from tests.train.conftest import build_corpus, manifest

pytestmark = pytest.mark.chaos
NOTICE_S = 30.0
# Far more than the scenario needs on any machine: the test cancels the job once the scenario is
# through, so how fast this machine trains decides nothing.
MAX_STEPS = 100_000
NODES = 3


def cluster_config(nodes: int) -> dict:
    return {"head": {"resources": {"CPU": 0}}, "provisioning_delay_s": 1.0, "idle_timeout_s": 600,
            "node_types": {"spot-cpu": {"resources": {"CPU": 1}, "min_workers": nodes, "max_workers": nodes}}}


@pytest.fixture
def cluster(tmp_path):
    sim = _cluster_with_nodes(tmp_path)
    leader = sim.state()["pid"]
    yield sim
    sim.down()
    assert session_members(leader) == [], "the cluster's processes outlived down()"


def _cluster_with_nodes(tmp_path, nodes: int = NODES) -> SimCluster:
    """A cluster whose ``nodes`` spot nodes joined. Once, a simulated node's raylet crashed as it started
    (SIGSEGV in Ray's own signal handler) and Ray's fake provider then waited for it forever, so a
    cluster that does not bring its nodes up in time is replaced once: that is the rehearsal tool
    failing, not the behaviour under test (the second try's log says so)."""
    for tries in range(1, 3):
        sim = SimCluster(tmp_path / f"spot-{tries}", parse_config(cluster_config(nodes)))
        sim.up()
        try:
            until(f"{nodes} spot nodes joined", lambda: sum(e["kind"] == "joined" for e in sim.events()) >= nodes, 180)
            return sim
        except TimeoutError:
            print(f"cluster try {tries}: its nodes did not join; provider events {sim.events()}")
            sim.down()
    raise AssertionError(f"the simulated spot cluster never brought up its {nodes} nodes")


def _spot(cluster, *args: str, wait: bool = True):
    """`bertctl spot ...` on this cluster, as a user drives it (it talks to the cluster's GCS in its own
    process, with the cluster's token; this test process never joins the cluster)."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "spot", *args, "--state-dir", str(cluster.state_dir)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _live_nodes(cluster) -> list[dict]:
    nodes = [json.loads(line) for line in _spot(cluster, "nodes", "--json").splitlines() if line.startswith("{")]
    return [n for n in nodes if n["alive"] and n["draining_deadline_ms"] is None]


def submit_at_step(server, cluster, body: str, nodes: int, step: int) -> str:
    """Once ``nodes`` spot nodes are live, submit the job; its id once it has trained ``step`` steps."""
    until(f"{nodes} live spot nodes", lambda: len(_live_nodes(cluster)) == nodes, 300)
    r = server.http.post("/v1/jobs", content=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    until(f"step {step}", lambda: server.job(job_id)["step"] >= step, 300)
    return job_id


def _job(tmp_path) -> str:
    path = manifest(tmp_path / "job.yaml", build_corpus(tmp_path / "corpus"), tmp_path / "ckpt", steps=MAX_STEPS, every=4,
                    keep_last=100, name="elastic")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["resources"]["workers"] = {"min": 1, "max": 3}
    doc["spec"]["training"].update(global_batch_size=12, micro_batch_size=2)  # every world size 1-3 keeps it
    doc["spec"]["checkpoint"]["preemption_deadline_s"] = NOTICE_S
    doc["spec"]["recovery"] = {"max_restarts": 0, "heartbeat_timeout_s": 300}
    return yaml.safe_dump(doc)


def _until(what: str, predicate, timeout_s: float = 300.0):
    return until(what, predicate, timeout_s)


def _resizes(server, job_id: str) -> list[dict]:
    return [e["data"] for e in server.events(job_id) if e["type"] == "resized"]


def _resized(server, job_id: str, kind: str) -> dict:
    return _until(f"a {kind} resize", lambda: next((r for r in _resizes(server, job_id) if r["kind"] == kind), None))


def _bertctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env={**os.environ, "BERTCTL_TOKEN": ADMIN},
                          capture_output=True, text=True, timeout=120)


def _worker_pids(tmp_path, job_id: str) -> set[str]:
    """The Ray Train worker processes that have started in the attempt (from its log)."""
    log = tmp_path / "data" / "jobs" / job_id / "attempt-1" / "trainer.log"
    return {line.split("pid=")[1].split(")")[0] for line in log.read_text().splitlines()
            if "(RayTrainWorker pid=" in line and "timing: worker_start=" in line}


def test_an_elastic_attempt_shrinks_grows_and_survives_a_kill_without_a_relaunch(server, cluster, tmp_path):
    job_id = submit_at_step(server, cluster, _job(tmp_path), nodes=NODES, step=6)
    workers_before = _worker_pids(tmp_path, job_id)

    notice = _spot(cluster, "preempt", "--notice", str(NOTICE_S), wait=False)
    shrink = _resized(server, job_id, "shrink_notice")
    assert (shrink["from_world"], shrink["to_world"]) == (3, 2)
    assert shrink["last_step"] == shrink["resumed_from_step"] and shrink["steps_lost"] == 0, shrink
    parts = [shrink[k] for k in ("detect_s", "reform_s", "load_s", "first_step_s")]
    assert None not in parts and abs(sum(parts) - shrink["pause_s"]) < 0.01, "the pause is the sum of its parts"
    assert _worker_pids(tmp_path, job_id) == workers_before, "the survivors re-formed in their own processes"

    assert notice.wait(timeout=120) == 0, notice.stdout.read()  # it returns once the node is gone
    _spot(cluster, "restore", "--type", "spot-cpu")
    grow = _resized(server, job_id, "grow")
    assert (grow["from_world"], grow["to_world"]) == (2, 3) and grow["steps_lost"] == 0, grow
    assert grow["resumed_from_step"] % 4 == 0, "a grow waits for a checkpoint boundary"

    _until("two steps on three workers", lambda: server.job(job_id)["step"] >= grow["resumed_from_step"] + 2)
    _spot(cluster, "kill")
    lost = _resized(server, job_id, "shrink_lost")
    assert (lost["from_world"], lost["to_world"]) == (3, 2), lost
    committed = [c.step for c in CheckpointStore(str(tmp_path / "ckpt")).committed()]
    assert lost["resumed_from_step"] in committed and lost["resumed_from_step"] >= grow["resumed_from_step"]

    _until("steps on the survivors", lambda: server.job(job_id)["step"] >= lost["resumed_from_step"] + 3)
    assert server.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = server.wait(job_id, terminal, 120)
    assert job["phase"] == "CANCELLED", job["message"]
    assert len(job["attempts"]) == 1 and job["restarts_used"] == 0, "no manager relaunch"
    assert job["goodput"]["resizes"] == 3 and job["goodput"]["resize_s"] > 0
    audit = _bertctl("audit", job_id, "--url", server.url)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    status = _bertctl("status", job_id, "--url", server.url)
    assert status.returncode == 0 and "resizes 3" in status.stdout, status.stdout + status.stderr
