"""Elastic inside an attempt vs relaunch on every loss, on the simulated spot cluster, replaying a real trace.

A bert-tiny job (the tests' tiny manifest: 2 layers, hidden 64, seq_len 64; micro batch 2 and
global batch 2 x lcm(1..nodes), 24 for 4 nodes, so that every world size keeps it) runs through a
real manager (embedded: loopback HTTP, SQLite, the local backend joining the cluster through
BERTCTL_RAY_CLUSTER_DIR) on a simulated spot cluster (an on-demand head with no CPU, ``--nodes``
spot nodes of 1 CPU each), while ``aws-p3-2xlarge-parcae.csv`` is replayed compressed in time
(orchestrator/spot/replay.py: the trace's peak scaled to ``--nodes``, one trace hour =
``--hour-s`` wall seconds, each taken node noticed ``--notice-s`` before it is SIGKILLed). Twice,
on the same schedule and seed, each on a fresh cluster: (a) elastic, ``workers: {min: 1, max:
nodes}``, noticed nodes drained with reason PREEMPTION; (b) relaunch, ``workers: nodes`` (any loss
ends the attempt and the manager relaunches it), noticed nodes killed at their deadline without a
drain (see bench/_spot_run.py for why; ``--relaunch-drain`` drains them too). The replay starts at
each job's first step and runs until the job ends (or ``--max-wall-s``, then the job is cancelled).

Goodput = kept steps x the mean step time of the world size each ran on (the manager's metric
history: the time between a group's reports over the steps between them; no checkpoint, recovery
or re-run time) / wall from the replay's start to the job's end; the manager's own goodput
accounting is printed beside it. The planner (orchestrator/spot/planner.py, ``mean_outcome``)
predicts the same run from the component times measured in it (those step times per world size
among them), over the replay
as the nodes the cluster held (a noticed node leaves at its deadline; the elastic job reacts at the
notice).

    nice -n 10 .venv/bin/python bench/spot.py [--quick] [--notice-s 30] [--hour-s 90] [--nodes 4] [--steps 2000]

The last line is ``ratios: goodput_elastic=<x> goodput_relaunch=<x> shrink_notice_s=<median>
grow_s=<median> steps_lost_notice=<n> planner_error=<|predicted-measured|/measured>``
(planner_error: the larger of the two policies').
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import signal
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._spot_run import RunResult, run_job  # noqa: E402
from orchestrator.spec import load_manifest  # noqa: E402
from orchestrator.spot.capacity import Timeline  # noqa: E402
from orchestrator.spot.planner import inputs_from_manifest, mean_outcome  # noqa: E402
from orchestrator.spot.planner_model import Components  # noqa: E402
from orchestrator.spot.replay import Change, rate_per_node_hour, schedule  # noqa: E402
from orchestrator.spot.traces import load_trace  # noqa: E402

TRACE = ROOT / "orchestrator/spot/traces_data/aws-p3-2xlarge-parcae.csv"
KINDS = ("shrink_notice", "shrink_lost", "grow")
PARTS = ("pause_s", "detect_s", "reform_s", "load_s", "first_step_s")


def job_doc(shards: Path, tmp: Path, policy: str, nodes: int, steps: int, every: int, notice_s: float) -> dict:
    from tests.train.conftest import manifest

    path = manifest(tmp / f"{policy}.yaml", shards, tmp / policy / "ckpt", steps=steps, every=every,
                    name=f"spot-{policy}")
    doc = yaml.safe_load(path.read_text())
    spec = doc["spec"]
    spec["resources"]["workers"] = {"min": 1, "max": nodes} if policy == "elastic" else nodes
    # Every world size from 1 to nodes must keep the global batch (the manifest is rejected otherwise):
    # micro batch 2, global batch 2 x lcm(1..nodes) (24 for 4 nodes), the same for both policies.
    spec["training"].update(micro_batch_size=2, global_batch_size=2 * math.lcm(*range(1, nodes + 1)))
    spec["checkpoint"]["preemption_deadline_s"] = max(5.0, notice_s)
    # Losses are the point: a generous retry budget, no backoff; an attempt waiting for capacity
    # (a fixed group needs every node back) or re-forming must not be mistaken for a dead one.
    spec["recovery"] = {"max_restarts": 200, "backoff_s": 0, "heartbeat_timeout_s": 240,
                        "startup_timeout_s": 1200}
    path.write_text(yaml.safe_dump(doc))
    return doc


# ----- measured ---------------------------------------------------------------------------------
def resizes(run: RunResult) -> list[dict]:
    return [e.get("data") or {} for e in run.events if e["type"] == "resized"]


def wall_s(run: RunResult) -> float:
    return max(1e-9, run.t_end - run.t0)


def _timed(run: RunResult) -> list[dict]:
    """The run's metric points up to its end, in the order they were reported."""
    return sorted((p for p in run.points if p["at"] <= run.t_end and p["world_size"]), key=lambda p: p["at"])


def kept_steps(run: RunResult) -> tuple[dict[int, int], int]:
    """World size of the run that each kept step came from (a step re-run after a rollback counts
    once, its last run), and how many step runs were rolled back (lost)."""
    kept: dict[int, int] = {}
    previous = lost = 0
    for p in _timed(run):
        if p["step"] <= previous:  # a rollback to a checkpoint (or a repeated report)
            lost += previous - p["step"] + 1
            kept = {s: w for s, w in kept.items() if s < p["step"]}
            previous = p["step"] - 1
        for s in range(previous + 1, p["step"] + 1):  # the history may thin points out: fill the gap
            kept[s] = int(p["world_size"])
        previous = p["step"]
    return kept, lost


def step_times(runs: list[RunResult]) -> dict[int, float]:
    """Mean seconds per step on each world size: the time between consecutive reports of one worker
    group over the steps between them (what the steps took, slow ones included, as the manager's
    goodput counts them). A gap across a relaunch, a change of world size, a rollback or a resize
    (its event arrives with the new group's report) is no training time and is left out."""
    spent: dict[int, float] = {}
    stepped: dict[int, int] = {}
    for run in runs:
        resized_at = [e["ts"] for e in run.events if e["type"] == "resized" and e.get("ts") is not None]
        pts = _timed(run)
        for a, b in zip(pts, pts[1:]):
            n, w = b["step"] - a["step"], int(a["world_size"])
            if a["attempt"] != b["attempt"] or w != b["world_size"] or n < 1:
                continue
            if any(a["at"] < t <= b["at"] for t in resized_at):
                continue
            spent[w] = spent.get(w, 0.0) + b["at"] - a["at"]
            stepped[w] = stepped.get(w, 0) + n
    return {w: spent[w] / stepped[w] for w in sorted(spent) if stepped[w] >= 3}


def productive_s(run: RunResult, times: dict[int, float]) -> float:
    """Kept steps x the mean step time of the world size each ran on (no checkpoint, recovery or
    re-run time): the planner's productive time."""
    fallback = statistics.median(times.values()) if times else 0.0
    return sum(times.get(w, fallback) for w in kept_steps(run)[0].values())


def goodput(run: RunResult, times: dict[int, float]) -> float:
    return productive_s(run, times) / wall_s(run)


def fit_step(times: dict[int, float]) -> tuple[float, float]:
    """``step_s(w) = a / w + b`` (the planner's form) fitted to the measured sizes."""
    if len(times) == 1:
        (w, t), = times.items()
        return t * w, 0.0
    x = np.array([1.0 / w for w in times])
    a, b = np.polyfit(x, np.array(list(times.values())), 1)
    return float(a), float(b)


def relaunched(run: RunResult) -> list[tuple[dict, dict]]:
    """(ended attempt, the next one) for each relaunch that trained: an attempt that found the last
    checkpoint at max_steps (its predecessor died after committing it) trains nothing and is no
    relaunch to time (it ends in a second or two)."""
    atts = run.job["attempts"]
    return [(prev, cur) for prev, cur in zip(atts, atts[1:])
            if prev["ended_at"] is not None and cur["recovery_s"] is not None and cur["resumed_from_step"] is not None]


def relaunches(run: RunResult, held: Timeline | None = None, group: int = 0) -> list[dict]:
    """Per relaunch of a fixed attempt: node gone -> attempt ended (detect) -> first step of the next
    (recovery). ``wait_s``: how much of it the pool held fewer than ``group`` nodes (``held``, the
    replay as the nodes the cluster held): the planner waits for those itself, so its relaunch time
    is the rest (``total_s - wait_s``)."""
    out = []
    for prev, cur in relaunched(run):
        gone = [x.gone_at for x in run.losses if x.gone_at <= prev["ended_at"] + 1.0]
        lost_at = max(gone) if gone else prev["ended_at"]
        first_step = prev["ended_at"] + cur["recovery_s"]
        wait = short_s(held, lost_at - run.t0, first_step - run.t0, group) if held is not None else 0.0
        out.append({"detect_s": prev["ended_at"] - lost_at, "recovery_s": cur["recovery_s"],
                    "total_s": first_step - lost_at, "wait_s": wait,
                    "steps_lost": prev["steps_lost"] or 0, "exit_code": prev["exit_code"]})
    return out


def placed_s(run: RunResult) -> list[float]:
    """Per relaunched attempt that stepped: its first step - its workers' start (the earliest
    ``timing: worker_start`` line in its trainer.log), the part of a relaunch during which its group
    holds its nodes. Slightly short: an actor holds its node a moment before its process logs."""
    out = []
    for prev, cur in relaunched(run):
        log = run.log_dir / "jobs" / run.job["id"] / f"attempt-{cur['number']}" / "trainer.log" if run.log_dir else None
        if log is None or not log.exists():
            continue
        starts = [float(t) for t in re.findall(r"timing: worker_start=([0-9.]+)", log.read_text(errors="replace"))]
        if starts:
            out.append(prev["ended_at"] + cur["recovery_s"] - min(starts))
    return out


def short_s(held: Timeline, start_s: float, end_s: float, need: int) -> float:
    """Seconds of [start_s, end_s] (replay time) during which ``held`` had fewer than ``need`` nodes."""
    count = held.start + int(held.deltas[held.times_s <= start_s].sum())
    short, t = 0.0, start_s
    for at, delta in zip(held.times_s.tolist(), held.deltas.tolist()):
        if at <= start_s:
            continue
        if at >= end_s:
            break
        short += (at - t) if count < need else 0.0
        count, t = count + int(delta), at
    return short + ((end_s - t) if count < need else 0.0)


def median(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


# ----- predicted --------------------------------------------------------------------------------
def components(runs: dict[str, RunResult], held: Timeline, nodes: int) -> Components:
    times = step_times(list(runs.values()))
    a, b = fit_step(times)
    saves = sum(r.job["checkpoints"] for r in runs.values())
    ckpt = sum(r.job["goodput"]["checkpoint_s"] for r in runs.values()) / max(1, saves)
    by_kind = {k: [r for r in resizes(runs["elastic"]) if r.get("kind") == k] for k in KINDS}
    base = Components(step_s_one=a, step_overhead_s=b, checkpoint_s=ckpt)
    notice, lost, grow = by_kind["shrink_notice"], by_kind["shrink_lost"], by_kind["grow"]
    rel, placed = relaunches(runs["relaunch"], held, nodes), placed_s(runs["relaunch"])
    return replace(
        base,
        reform_s=max(0.0, median([r["pause_s"] for r in notice]) - ckpt) if notice else base.reform_s,
        # Without a grow in the run, a grow is priced as the trainer prices it: like its re-forms.
        grow_s=max(0.0, median([r["pause_s"] for r in grow or notice]) - ckpt) if grow or notice else base.grow_s,
        detect_s=median([r["detect_s"] for r in lost]) if lost else base.detect_s,
        load_s=median([(r["load_s"] or 0) + (r["first_step_s"] or 0) for r in lost]) if lost else base.load_s,
        relaunch_s=median([r["total_s"] - r["wait_s"] for r in rel]) if rel else base.relaunch_s,
        relaunch_placed_s=median(placed) if placed else None)


def timeline(changes: list[Change], notice_s: float, horizon_s: float) -> Timeline:
    """The replay as the nodes the cluster held: a taken node keeps its slot until its deadline (the
    provider counts a draining node), so it leaves then and a replacement joins only once the pool
    has a free slot. The planner moves a noticed loss back by the notice, to when the job reacts."""
    held, slots, deaths, times, deltas = changes[0].capacity, changes[0].capacity, [], [], []

    def settle(t: float) -> None:
        nonlocal held
        while held < slots:  # the autoscaler fills a free slot (min_workers = nodes)
            held += 1
            times.append(t)
            deltas.append(1)

    events = sorted([(c.at_s, 1, c) for c in changes[1:]])
    while events or deaths:
        if deaths and (not events or min(deaths) <= events[0][0]):
            t = min(deaths)
            deaths.remove(t)
            held -= 1
            times.append(t)
            deltas.append(-1)
        else:
            t, _, change = events.pop(0)
            slots = change.capacity
            deaths += [t + notice_s] * min(change.taken, held - len(deaths))
        settle(t)
    keep = [i for i, t in enumerate(times) if t < horizon_s]
    return Timeline(changes[0].capacity, np.array([times[i] for i in keep], dtype=float),
                    np.array([deltas[i] for i in keep], dtype=int), horizon_s)


def predict(doc: dict, tmp: Path, policy: str, comp: Components, changes: list[Change], notice_s: float,
            run: RunResult, interval: int) -> tuple[float, dict]:
    path = tmp / f"plan-{policy}.yaml"
    path.write_text(yaml.safe_dump(doc))
    nodes = doc["spec"]["resources"]["workers"]
    nodes = nodes if isinstance(nodes, int) else nodes["max"]
    inp = inputs_from_manifest(load_manifest(path), nodes, 1.0, spot_price=0.918, on_demand_price=3.06,
                               seeds=1, notice_s=notice_s if policy == "elastic" else 0.0)
    # A fixed attempt does not hear of a node's notice (only the elastic one watches Ray's drains):
    # its nodes are simply gone at the deadline, so the relaunch policy is predicted without one.
    # A run cut at the wall cap is predicted over the same window: with max_steps out of reach the
    # planner cannot finish early (a short job that ends before the first loss predicts no recovery).
    steps = 10**9 if run.capped else max(1, doc["spec"]["training"]["max_steps"] - 1)
    inp = replace(inp, components=comp, max_steps=steps)
    horizon = wall_s(run) if run.capped else 20.0 * wall_s(run) + 3600.0
    result = mean_outcome(inp, policy, interval, [timeline(changes, notice_s, horizon)])
    return result.goodput, result.recoveries


# ----- report -----------------------------------------------------------------------------------
def report_run(run: RunResult, times: dict[int, float]) -> None:
    g = run.job["goodput"]
    print(f"\n== {run.policy}: job {run.job['phase']}{' (wall cap reached, cancelled)' if run.capped else ''} "
          f"at step {run.job['step']}/{run.job['max_steps']}, {len(run.job['attempts'])} attempt(s), "
          f"{len(run.losses)} node(s) taken" + (f", {run.stale_locks} stale torch build lock(s) removed"
                                                 if run.stale_locks else ""))
    print(f"  goodput {goodput(run, times):.3f} = productive {productive_s(run, times):.1f} s / wall "
          f"{wall_s(run):.1f} s (kept steps x mean step time per world size, from the metric history; wall "
          f"from the replay's start); the manager's own: productive {g['productive_s']:.1f} s, productive_fraction "
          f"{g['productive_fraction']} (wall from submission)")
    print(f"  steps lost {kept_steps(run)[1]} (metric history: step runs rolled back; the manager counts "
          f"{g['steps_lost']}), checkpointing {g['checkpoint_s']:.1f} s over {run.job['checkpoints']} commit(s), "
          f"resizes {g['resizes']} ({g['resize_s']:.1f} s paused)")
    rs = resizes(run)
    for kind in KINDS:
        rows = [r for r in rs if r.get("kind") == kind]
        if rows:
            split = ", ".join(f"{p} {median([r.get(p) for r in rows]):.2f}" for p in PARTS)
            lost = sum(r.get("steps_lost") or 0 for r in rows)
            print(f"  {kind:<13} x{len(rows)}: median {split}; steps lost {lost}; pauses "
                  + " ".join(f"{r.get('pause_s')}" for r in rows))
    rel = relaunches(run)
    if rel:
        split = ", ".join(f"{p} {median([r[p] for r in rel]):.2f}" for p in ("detect_s", "recovery_s", "total_s"))
        print(f"  relaunch      x{len(rel)}: median {split}; steps lost {sum(r['steps_lost'] for r in rel)}; "
              f"exit codes {[r['exit_code'] for r in rel]}")
        print("    (relaunch: detect = node gone -> attempt ended, recovery = -> next attempt's first step, total = "
              "node gone -> first step)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short scenario (about 5-8 minutes in all)")
    ap.add_argument("--notice-s", type=float, default=30.0, help="spot notice before a node goes (0: none)")
    ap.add_argument("--hour-s", type=float, default=None, help="wall seconds per trace hour (default 90, quick 60)")
    ap.add_argument("--nodes", type=int, default=4, help="spot worker nodes (1 CPU each), at least 4")
    ap.add_argument("--steps", type=int, default=None, help="max_steps (default 2000, quick 300)")
    ap.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    ap.add_argument("--start-h", type=float, default=0.4, help="trace hour the replay starts at")
    ap.add_argument("--max-wall-s", type=float, default=None, help="per run (default 900, quick 120)")
    ap.add_argument("--provisioning-delay-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relaunch-drain", action="store_true",
                    help="drain noticed nodes in the relaunch run too (Ray Train then restarts the fixed group "
                         "inside the attempt; see bench/_spot_run.py)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print it")
    args = ap.parse_args()
    if args.nodes < 4:
        ap.error("--nodes must be at least 4")
    hour_s = args.hour_s or (60.0 if args.quick else 90.0)
    steps = args.steps or (300 if args.quick else 2000)
    max_wall = args.max_wall_s or (120.0 if args.quick else 900.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-spot-"))
    # A terminated benchmark unwinds like an interrupted one: its cluster and manager go down with it
    # (the simulated cluster's processes are detached and would otherwise hold the cores).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        run_all(args, hour_s, steps, max_wall, tmp)
    finally:
        if args.keep:
            print(f"# work directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_all(args, hour_s: float, steps: int, max_wall: float, tmp: Path) -> None:
    from tests.train.conftest import build_corpus

    trace = load_trace(TRACE)
    changes = schedule(trace, args.nodes, hour_s, start_h=args.start_h, duration_h=max_wall / hour_s)
    print(f"# {TRACE.name}: peak {trace.peak} scaled to {args.nodes} nodes, hour = {hour_s:g} s, from trace hour "
          f"{args.start_h:g}; {sum(c.taken for c in changes)} node(s) taken in {len(changes)} changes within "
          f"{max_wall:g} s ({rate_per_node_hour(changes, args.nodes, hour_s):.2f}/node-trace-hour); notice "
          f"{args.notice_s:g} s; {steps} steps, checkpoint every {args.every}", flush=True)
    shards = build_corpus(tmp / "corpus")
    docs = {p: job_doc(shards, tmp, p, args.nodes, steps, args.every, args.notice_s) for p in ("elastic", "relaunch")}
    runs = {}
    for policy, doc in docs.items():
        drain = policy == "elastic" or args.relaunch_drain
        print(f"# {policy}: workers {doc['spec']['resources']['workers']}; a noticed node "
              f"{'is drained (PREEMPTION) and ' if drain else 'is not drained, it is '}SIGKILLed at its deadline",
              flush=True)
        runs[policy] = run_job(policy, doc, tmp / policy, tmp / "spot", args.nodes, changes, args.notice_s, max_wall,
                               args.seed, args.provisioning_delay_s, drain=drain)
    # Each run's own step times (the two runs share the 2 cores differently); the fitted form covers
    # world sizes a run never ran on.
    times = {p: step_times([r]) for p, r in runs.items()}
    for policy, run in runs.items():
        report_run(run, times[policy])
    comp = components(runs, timeline(changes, args.notice_s, max_wall), args.nodes)
    print(f"\nplanner inputs (measured here): step_s(w) = {comp.step_s_one:.3f}/w + {comp.step_overhead_s:.3f}, "
          "or per run and world size where it ran on it ("
          + "; ".join(f"{p}: " + ", ".join(f"{w}: {t:.3f}" for w, t in times[p].items()) for p in runs)
          + f"), checkpoint {comp.checkpoint_s:.2f} s, reform {comp.reform_s:.2f} s, grow {comp.grow_s:.2f} s, "
          f"detect {comp.detect_s:.2f} s, load {comp.load_s:.2f} s, relaunch {comp.relaunch_s:.2f} s (on its nodes "
          f"for the last {comp.relaunch_placed_s or comp.relaunch_s:.2f} s)")
    errors, measured = {}, {p: goodput(r, times[p]) for p, r in runs.items()}
    for policy, run in runs.items():
        own = replace(comp, measured_step_s=tuple(times[policy].items()))
        predicted, recoveries = predict(docs[policy], tmp, policy, own, changes, args.notice_s, run, args.every)
        errors[policy] = abs(predicted - measured[policy]) / max(measured[policy], 1e-9)
        print(f"planner, {policy}: goodput {predicted:.3f} (measured {measured[policy]:.3f}, error "
              f"{errors[policy]:.2f}), recoveries {recoveries}")
    el = resizes(runs["elastic"])
    notice = [r for r in el if r.get("kind") == "shrink_notice"]
    print(f"ratios: goodput_elastic={measured['elastic']:.3f} goodput_relaunch={measured['relaunch']:.3f} "
          f"shrink_notice_s={median([r.get('pause_s') for r in notice]):.1f} "
          f"grow_s={median([r.get('pause_s') for r in el if r.get('kind') == 'grow']):.1f} "
          f"steps_lost_notice={sum(r.get('steps_lost') or 0 for r in notice)} "
          f"planner_error={max(errors.values()):.2f}")


if __name__ == "__main__":
    main()
