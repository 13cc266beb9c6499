"""Failover of a highly available manager: kill -9 the supervising replica, again and again.

Two `bertctl server` replicas on one fresh PostgreSQL database (local backend, a shared data dir,
the stand-in trainer tests/manager/ha_trainer.py, which reports through the real heartbeat client
with every replica's URL). One job trains throughout. Each round: snapshot the job's events, kill
-9 the replica whose /healthz says "supervising", time until the other one says so (takeover),
check every snapshotted event is still there, restart the killed replica on its port (it becomes
the standby). At the end the job is cancelled and the launches are counted from the trainers' own
log (one line per process start) and from the events.

    .venv/bin/python bench/failover.py [--kills 10] [--lease-ttl-s 8]

The last line is
``ratios: takeover_s_median=<x> takeover_s_max=<x> double_launches=<n> lost_events=<n>``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.manager.conftest import make_manifest  # noqa: E402
from tests.manager.procs import free_port  # noqa: E402
from tests.manager.replicas import Replica, fresh_database, launches, wait_for  # noqa: E402


def supervisor_of(replicas: list[Replica]) -> Replica:
    return wait_for(lambda: next((r for r in replicas if r.supervising()), None), 60, what="a supervisor")


def events(replica: Replica, job_id: str) -> list[dict]:
    return replica.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 10000}).json()["events"]


def one_kill(replicas: list[Replica], job_id: str) -> tuple[float, int, int]:
    """Kill the supervisor; returns (takeover seconds, events lost, steps trained meanwhile)."""
    leader = supervisor_of(replicas)
    standby = next(r for r in replicas if r is not leader)
    before = events(standby, job_id)
    step = standby.http.get(f"/v1/jobs/{job_id}").json()["step"]
    killed_at = time.monotonic()
    leader.kill9()
    wait_for(standby.supervising, 60, poll_s=0.05, what="the standby to take over")
    takeover_s = time.monotonic() - killed_at
    after = {e["id"]: e for e in events(standby, job_id)}
    lost = sum(1 for e in before if after.get(e["id"]) != e)
    leader.spawn().wait_serving()
    # the trainer's heartbeats reach the new supervisor (the replica that launched it may be dead)
    wait_for(lambda: standby.http.get(f"/v1/jobs/{job_id}").json()["step"] > step + 5, 60, what="progress")
    return takeover_s, lost, standby.http.get(f"/v1/jobs/{job_id}").json()["step"] - step


def double_launches(ckpt: Path, all_events: list[dict]) -> int:
    """Trainer processes started more than once for one attempt number, plus attempts recorded
    'launching' more than once."""
    starts = collections.Counter(attempt for attempt, _ in launches(ckpt))
    recorded = collections.Counter(e["attempt"] for e in all_events if e["type"] == "launching")
    return sum(n - 1 for n in starts.values() if n > 1) + sum(n - 1 for n in recorded.values() if n > 1)


def run(kills: int, ttl_s: float, tmp: Path) -> None:
    data = tmp / "data"
    data.mkdir()
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with fresh_database() as db:
        replicas = [Replica(data, p, db, urls, lease_ttl_s=ttl_s).spawn() for p in ports]
        try:
            for r in replicas:
                r.wait_serving()
            manifest = make_manifest(tmp, max_steps=1_000_000, every=20, labels={"fake-step-s": "0.1"})
            ckpt = Path(manifest["spec"]["checkpoint"]["uri"])
            job_id = replicas[0].http.post("/v1/jobs", content=yaml.safe_dump(manifest)).json()["id"]
            wait_for(lambda: replicas[0].http.get(f"/v1/jobs/{job_id}").json()["step"] >= 10, 60, what="training")
            takeovers, lost = [], 0
            for i in range(kills):
                takeover_s, lost_now, steps = one_kill(replicas, job_id)
                takeovers.append(takeover_s)
                lost += lost_now
                print(f"kill {i + 1}: takeover {takeover_s:.2f} s, events lost {lost_now}, "
                      f"{steps} steps trained since the kill", flush=True)
            leader = supervisor_of(replicas)
            leader.http.post(f"/v1/jobs/{job_id}/cancel")
            job = wait_for(lambda: (lambda j: j["phase"] == "CANCELLED" and j)(leader.http.get(f"/v1/jobs/{job_id}").json()),
                           120, poll_s=0.5, what="the cancel")
            all_events = events(leader, job_id)
        finally:
            for r in replicas:
                r.close()
    doubles = double_launches(ckpt, all_events)
    print(f"job {job_id}: {len(job['attempts'])} attempt(s), {len(launches(ckpt))} trainer start(s), "
          f"step {job['step']}, {len(all_events)} events, "
          f"{sum(e['type'] == 'adopting' for e in all_events)} adoptions")
    print(f"ratios: takeover_s_median={statistics.median(takeovers):.2f} takeover_s_max={max(takeovers):.2f} "
          f"double_launches={doubles} lost_events={lost}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease-ttl-s", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bertctl-failover-") as tmp:
        run(args.kills, args.lease_ttl_s, Path(tmp))


if __name__ == "__main__":
    main()
