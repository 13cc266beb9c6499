"""Helpers of the tests that run an elastic attempt on the simulated spot cluster through a real
manager: the cluster, `bertctl spot` as a user drives it, and what the job's events and log say."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from orchestrator.spot.config import parse_config
from orchestrator.spot.sim_cluster import SimCluster
from tests.manager.procs import ADMIN
from tests.spot.scenario import until
from tests.train.conftest import build_corpus, manifest

# Far more than a scenario needs on any machine: a test cancels its job once the scenario is
# through, so how fast this machine trains decides nothing.
MAX_STEPS = 100_000


def cluster_config(nodes: int) -> dict:
    return {"head": {"resources": {"CPU": 0}}, "provisioning_delay_s": 1.0, "idle_timeout_s": 600,
            "node_types": {"spot-cpu": {"resources": {"CPU": 1}, "min_workers": nodes, "max_workers": nodes}}}


def cluster_with_nodes(tmp_path, nodes: int) -> SimCluster:
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


def spot(cluster, *args: str, wait: bool = True):
    """`bertctl spot ...` on this cluster, as a user drives it (it talks to the cluster's GCS in its own
    process, with the cluster's token; this test process never joins the cluster)."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "spot", *args, "--state-dir", str(cluster.state_dir)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def live_nodes(cluster) -> list[dict]:
    nodes = [json.loads(line) for line in spot(cluster, "nodes", "--json").splitlines() if line.startswith("{")]
    return [n for n in nodes if n["alive"] and n["draining_deadline_ms"] is None]


def submit_at_step(server, cluster, body: str, nodes: int, step: int) -> str:
    """Once ``nodes`` spot nodes are live, submit the job; its id once it has trained ``step`` steps."""
    until(f"{nodes} live spot nodes", lambda: len(live_nodes(cluster)) == nodes, 300)
    r = server.http.post("/v1/jobs", content=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    until(f"step {step}", lambda: server.job(job_id)["step"] >= step, 300)
    return job_id


def wait_until(what: str, predicate, timeout_s: float = 300.0):
    return until(what, predicate, timeout_s)


def resizes(server, job_id: str) -> list[dict]:
    return [e["data"] for e in server.events(job_id) if e["type"] == "resized"]


def resized(server, job_id: str, kind: str) -> dict:
    return wait_until(f"a {kind} resize", lambda: next((r for r in resizes(server, job_id) if r["kind"] == kind), None))


def bertctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env={**os.environ, "BERTCTL_TOKEN": ADMIN},
                          capture_output=True, text=True, timeout=120)


def elastic_job(tmp_path, workers: dict, global_batch: int, notice_s: float) -> str:
    """A manifest of an elastic job checkpointing every 4 steps, on a corpus of its own, that the
    manager never relaunches (every recovery under test happens inside its one attempt)."""
    path = manifest(tmp_path / "job.yaml", build_corpus(tmp_path / "corpus"), tmp_path / "ckpt", steps=MAX_STEPS, every=4,
                    keep_last=100, name="elastic")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["resources"]["workers"] = workers
    doc["spec"]["training"].update(global_batch_size=global_batch, micro_batch_size=2)
    doc["spec"]["checkpoint"]["preemption_deadline_s"] = notice_s
    doc["spec"]["recovery"] = {"max_restarts": 0, "heartbeat_timeout_s": 300}
    return yaml.safe_dump(doc)


def trainer_log(tmp_path, job_id: str) -> str:
    return (tmp_path / "data" / "jobs" / job_id / "attempt-1" / "trainer.log").read_text()


def worker_pids(tmp_path, job_id: str) -> set[str]:
    """The Ray Train worker processes that have started in the attempt (from its log)."""
    return {line.split("pid=")[1].split(")")[0] for line in trainer_log(tmp_path, job_id).splitlines()
            if "(RayTrainWorker pid=" in line and "timing: worker_start=" in line}
