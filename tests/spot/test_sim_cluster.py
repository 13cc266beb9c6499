"""The simulated spot cluster for real: Ray's autoscaler over the spot node provider, a noticed
preemption (PREEMPTION drain, node gone at its deadline), a kill without notice, capacity back.

One short scenario on its own cluster; only the cluster's own processes are stopped.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from ray._private.utils import read_ray_address

from orchestrator.spot.config import parse_config
from orchestrator.spot.sim_cluster import SimCluster, session_members

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
NOTICE_S = 4.0
CONFIG = {"head": {"resources": {"CPU": 1}}, "provisioning_delay_s": 1.0, "idle_timeout_s": 300,
          "node_types": {"spot-cpu": {"resources": {"CPU": 1, "spot_node": 1}, "max_workers": 3}}}


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    # This machine's built torch ops, as the provider finds them (one with a lock file left behind).
    built = tmp_path / "machine-extensions" / "some_op"
    built.mkdir(parents=True)
    (built / "some_op.so").write_bytes(b"built")
    (built / "lock").write_text("")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(built.parent))
    sim = SimCluster(tmp_path / "spot", parse_config(CONFIG))
    sim.up()
    leader, port = sim.state()["pid"], sim.state()["port"]
    assert read_ray_address().endswith(f":{port}")  # `ray start` made it this machine's default cluster
    yield sim
    sim.down()
    assert session_members(leader) == [], "the cluster's processes outlived down()"
    # ... and a later plain ray.init() must not try to join the cluster that is gone.
    assert not (read_ray_address() or "").endswith(f":{port}")


def _run_scenario(sim: SimCluster) -> dict[str, dict]:
    env = {**os.environ, **sim.client_environ(), "PYTHONPATH": str(ROOT)}
    workload = subprocess.Popen([sys.executable, str(HERE / "workload.py"), "2"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = subprocess.run([sys.executable, str(HERE / "scenario.py"), str(sim.state_dir), str(NOTICE_S)],
                              env=env, capture_output=True, text=True, timeout=240)
    finally:
        workload.kill()
        workload.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {line["step"]: line for line in lines}


@pytest.mark.chaos
def test_autoscaled_nodes_are_preempted_with_and_without_notice_and_come_back(cluster):
    steps = _run_scenario(cluster)

    up = steps["up"]
    assert len(up["nodes"]) >= 2 and set(up["types"]) == {"spot-cpu"}

    notice = steps["notice"]
    during = notice["during"]
    assert during["alive"], "a noticed node keeps running until its deadline"
    assert abs(during["draining_deadline_ms"] - notice["deadline_s"] * 1000) < 1000

    noticed = steps["after_notice"]["node"]
    assert not noticed["alive"] and noticed["death_reason"] == "AUTOSCALER_DRAIN_PREEMPTED"
    assert cluster.node_processes(noticed["node_id"]) == []

    killed = steps["after_kill"]["node"]
    assert not killed["alive"] and killed["death_reason"] != "AUTOSCALER_DRAIN_PREEMPTED"
    assert cluster.node_processes(killed["node_id"]) == []

    back = steps["back"]["nodes"]
    assert len(back) >= 2 and not set(back) & {noticed["node_id"], killed["node_id"]}
    _each_node_has_its_own_torch_extensions(cluster, back)
    # One log monitor (the head's) forwards the machine's worker logs: one per node printed each line per node.
    monitors = [p.pid for p in session_members(cluster.state()["pid"]) if "log_monitor" in " ".join(_cmdline_of(p))]
    assert len(monitors) == 1, f"log monitors {monitors} for a head and {len(back)} nodes"

    # The provider records a join once the node's launch call returns, a moment after Ray sees it.
    events = _wait_for(cluster, lambda kinds: kinds.count("joined") >= 4)
    gone_at = next(e["ts"] for e in events if e["kind"] == "deadline")
    assert gone_at >= notice["deadline_s"] - 0.05, "the noticed node was removed before its deadline"
    assert [e["kind"] for e in events].count("removed") >= 2
    # From the first node taken until capacity comes back, the pool has no free slot: the autoscaler
    # may ask (it sees the demand), but the provider must accept no launch. Launches before the first
    # notice are the autoscaler's own (it may ask for a third node while the workload starts).
    taken_at = next(e["ts"] for e in events if e["kind"] == "notice")
    restored_at = next(e["ts"] for e in events if e["kind"] == "capacity")
    accepted = [e for e in events if e["kind"] == "requested" and taken_at <= e["ts"] < restored_at]
    assert accepted == [], f"launches accepted while the taken nodes' slots were gone: {accepted}; events {events}"


def _each_node_has_its_own_torch_extensions(sim: SimCluster, node_ids: list[str]) -> None:
    """A node's processes see a directory of their own holding the machine's built op, without its lock:
    a node killed inside torch's JIT load leaves its lock where no other node looks."""
    dirs = set()
    for node_id in node_ids:
        seen = {_environ_of(pid).get("TORCH_EXTENSIONS_DIR", "") for pid in sim.node_processes(node_id)} - {None}
        assert len(seen) == 1, f"node {node_id}'s processes disagree on TORCH_EXTENSIONS_DIR: {seen}"
        own = Path(seen.pop())
        assert own.is_relative_to(sim.state_dir) and (own / "some_op" / "some_op.so").read_bytes() == b"built"
        assert not (own / "some_op" / "lock").exists()
        dirs.add(own)
    assert len(dirs) == len(node_ids)


def _cmdline_of(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # exited meanwhile
        return []


def _environ_of(pid: int) -> dict:
    try:
        return psutil.Process(pid).environ()
    except psutil.Error:  # a worker that exited meanwhile
        return {"TORCH_EXTENSIONS_DIR": None}


def _wait_for(sim: SimCluster, predicate, timeout_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        events = sim.events()
        if predicate([e["kind"] for e in events]):
            return events
        assert time.monotonic() < deadline, f"the provider's events never got there: {events}"
        time.sleep(0.2)
