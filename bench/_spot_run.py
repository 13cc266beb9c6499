"""One job on a fresh simulated spot cluster, through a real manager, while a trace is replayed.

Used by bench/spot.py: the cluster (an on-demand head with no CPU, so the trainer's driver runs
there and every worker needs a spot node; ``nodes`` spot nodes of 1 CPU each), an embedded
manager (loopback HTTP, SQLite, the local backend joining the cluster through
``BERTCTL_RAY_CLUSTER_DIR``), the replay (``orchestrator/spot/replay.py``) started at the job's
first step, and what the run leaves behind: the job view, its events and metric points, and when
each node was noticed and when it went.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spot.chaos import Chaos
from orchestrator.spot.config import parse_config
from orchestrator.spot.replay import Change, replay
from orchestrator.spot.sim_cluster import SimCluster

NODE_TYPE = "spot-cpu"
_TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def cluster_config(nodes: int, provisioning_delay_s: float) -> dict[str, Any]:
    # min_workers = nodes: the pool refills whenever the replayed capacity allows, for both policies
    # alike (the elastic job also asks for max; a fixed job's pending group asks for all of them).
    return {"head": {"resources": {"CPU": 0}}, "provisioning_delay_s": provisioning_delay_s,
            "idle_timeout_s": 600, "node_types": {NODE_TYPE: {"resources": {"CPU": 1}, "min_workers": nodes,
                                                              "max_workers": nodes}}}


class _StoppableChaos(Chaos):
    """``replay()`` has no stop of its own: once stopped, the replay sees no live node and its
    capacity changes do nothing, so its thread runs out harmlessly after the cluster is down.

    ``drain=False``: a noticed node is SIGKILLed at its deadline without Ray's PREEMPTION drain.
    A fixed-size attempt never reads drains (only SIGTERM or the notice file), so for it this is
    the same loss at the same time; but Ray 2.60's default failure policy retries a worker death
    that Ray records as a preemption inside the attempt without limit (``max_preemption_failures``
    defaults to -1 and the trainer sets only ``max_failures=0``), so with the drain a fixed attempt
    is restarted by Ray Train in place instead of ending and being relaunched by the manager."""

    def __init__(self, cluster: SimCluster, seed: int, drain: bool = True):
        super().__init__(cluster, seed)
        self.stopped = threading.Event()
        self.drain = drain

    def preempt(self, node, notice_s: float) -> float:
        if self.drain or notice_s <= 0:
            return super().preempt(node, notice_s)
        self._take_slot(node)
        timer = threading.Timer(notice_s, self._remove, args=(node, "deadline"))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)
        return time.time() + notice_s

    def live(self, node_type: str | None = None):
        return [] if self.stopped.is_set() else super().live(node_type)

    def set_capacity(self, node_type: str, slots: int) -> int:
        return 0 if self.stopped.is_set() else super().set_capacity(node_type, slots)

    def stop(self) -> None:
        self.stopped.set()
        for timer in self._timers:  # pending deadlines belong to this cluster, which goes down now
            timer.cancel()


class StaleBuildLock(threading.Thread):
    """Removes a torch JIT-build lock a SIGKILLed node left behind (while the run lasts).

    Every DeepSpeed engine on CPU loads its shm_comm op through ``torch.utils.cpp_extension.load``,
    which holds ``<TORCH_EXTENSIONS_DIR>/<name>/lock`` for the (no-op) build. On a real cluster a
    node killed inside that second takes its disk with it; here every simulated node shares this
    machine's cache, so the lock stays and every later worker start on the machine waits on it
    forever (seen: a re-formed group stuck in ``deepspeed.initialize``). A lock older than
    ``max_age_s`` beside an already built op is such a leftover."""

    def __init__(self, max_age_s: float = 60.0):
        super().__init__(daemon=True)
        self.max_age_s = max_age_s
        self.done = threading.Event()
        self.removed = 0

    def run(self) -> None:
        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
        while not self.done.wait(5.0):
            for lock in root.glob("*/*/lock"):
                try:
                    stale = time.time() - lock.stat().st_mtime > self.max_age_s
                except OSError:
                    continue
                if stale and any(lock.parent.glob("*.so")):
                    lock.unlink(missing_ok=True)
                    self.removed += 1
                    print(f"#   removed a stale torch build lock {lock} (a node was killed while holding it)",
                          flush=True)


@dataclass
class Loss:
    node_id: str
    noticed_at: float
    gone_at: float      # the notice's deadline (the node is SIGKILLed then); = noticed_at without notice


@dataclass
class RunResult:
    policy: str
    job: dict[str, Any]
    events: list[dict[str, Any]]
    points: list[dict[str, Any]]
    t0: float                       # replay start (the job's first step seen), epoch s
    t_end: float                    # the job's end (or the wall cap), epoch s
    capped: bool
    losses: list[Loss] = field(default_factory=list)
    stale_locks: int = 0
    log_dir: Path | None = None


class _Api:
    def __init__(self, em):
        import httpx

        self.http = httpx.Client(base_url=em.url, headers={"Authorization": f"Bearer {em.token}"}, timeout=30)

    def submit(self, doc: dict) -> str:
        r = self.http.post("/v1/jobs", content=yaml.safe_dump(doc))
        r.raise_for_status()
        return r.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 10000}).json()["events"]

    def points(self, job_id: str) -> list[dict[str, Any]]:
        return self.http.get(f"/v1/jobs/{job_id}/metrics").json()["points"]

    def cancel(self, job_id: str) -> None:
        self.http.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()


def _until(what: str, predicate, timeout_s: float, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def run_job(policy: str, doc: dict, work: Path, state_dir: Path, nodes: int, changes: list[Change],
            notice_s: float, max_wall_s: float, seed: int, provisioning_delay_s: float,
            drain: bool = True) -> RunResult:
    """Start the cluster, run ``doc`` through a manager while replaying ``changes``, tear down."""
    from orchestrator.manager.embedded import EmbeddedManager

    sim = SimCluster(state_dir, parse_config(cluster_config(nodes, provisioning_delay_s)))
    sim.up()
    # Same state dir for both runs: one token file, so this process's Ray client never sees two tokens.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(sim.token_file))
    os.environ["BERTCTL_RAY_CLUSTER_DIR"] = str(state_dir)
    chaos = _StoppableChaos(sim, seed, drain)
    locks = StaleBuildLock()
    locks.start()
    try:
        _until(f"{nodes} live spot nodes", lambda: len(chaos.live(NODE_TYPE)) >= nodes, 240)
        with EmbeddedManager(data_dir=work / "manager", interval_s=0.5, warm_ray=False) as em:
            result = _drive(policy, _Api(em), doc, chaos, changes, notice_s, max_wall_s, em.data_dir)
        result.stale_locks = locks.removed
        return result
    finally:
        locks.done.set()
        chaos.stop()
        sim.down()


def _drive(policy: str, api: _Api, doc: dict, chaos: _StoppableChaos, changes: list[Change], notice_s: float,
           max_wall_s: float, log_dir: Path) -> RunResult:
    job_id = api.submit(doc)
    _until("the job's first step", lambda: _started(api.job(job_id)), 900)
    t0, losses = time.time(), []

    def record(change: Change, taken: list[str]) -> None:
        if chaos.stopped.is_set():
            return
        now = time.time()
        losses.extend(Loss(n, now, now + notice_s) for n in taken)
        print(f"#   {policy} t={now - t0:6.1f} s: capacity {change.capacity}, took {len(taken)} node(s)", flush=True)

    thread = threading.Thread(target=replay, args=(chaos, NODE_TYPE, changes, notice_s, record), daemon=True)
    thread.start()
    capped = False
    try:
        _until(f"{job_id} to end", lambda: api.job(job_id)["phase"] in _TERMINAL, max_wall_s, poll_s=1.0)
        t_end = api.job(job_id)["ended_at"]
    except TimeoutError:
        capped, t_end = True, time.time()
        chaos.stop()
        api.cancel(job_id)
        _until(f"{job_id} to be cancelled", lambda: api.job(job_id)["phase"] in _TERMINAL, 180)
    chaos.stop()
    job = api.job(job_id)
    return RunResult(policy, job, api.events(job_id), api.points(job_id), t0, t_end, capped, losses,
                     log_dir=log_dir)


def _started(job: dict[str, Any]) -> bool:
    if job["phase"] in ("FAILED", "CANCELLED"):
        raise RuntimeError(f"job {job['id']} {job['phase']} before its first step: {job.get('message')}")
    return job["step"] >= 1
