"""`bertctl plan`: predicted goodput, wall time and cost of a PretrainJob on spot capacity.

Inputs: the manifest (max_steps, global batch, worker range, checkpoint interval), a node count,
the preemptions (a trace, or a rate with burstiness), the notice, prices, and the component
times (``Components``). For each policy (elastic inside the attempt, relaunch on every loss) the
model (``planner_model.py``) runs over the same capacity timelines (common random numbers, one
per seed) at the manifest's interval, at the Young–Daly interval the trainer would use for
``every_steps: auto``, and over a grid around it to find the interval with the best goodput.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from orchestrator.errors import PermanentError
from orchestrator.spec import PretrainJob
from orchestrator.spec_rules import valid_worker_counts
from orchestrator.spot.capacity import Timeline, from_rate, from_trace
from orchestrator.spot.planner_model import POLICIES, Components, Outcome, Scenario, simulate
from orchestrator.spot.rules import PRIOR_MTBP_S, notice_fits, young_daly_interval_s
from orchestrator.spot.traces import Trace

# Interval grid around the Young–Daly interval: 1/8x .. 64x in steps of sqrt(2) (a notice that fits a save
# makes losses cheap, and the best interval then lies far above Young–Daly).
_GRID = 2.0 ** np.arange(-3.0, 6.01, 0.5)


@dataclass(frozen=True)
class PlanInputs:
    nodes: int
    min_workers: int
    max_steps: int
    interval_steps: int | None      # the manifest's every_steps (None: 'auto')
    notice_s: float
    spot_price: float               # per node-hour
    on_demand_price: float          # per node-hour
    components: Components
    trace: Trace | None = None
    rate_per_node_h: float = 0.61   # used without a trace
    burst: float = 1.0
    return_s: float = 600.0
    seeds: int = 3
    sizes: tuple[int, ...] = ()     # world sizes that keep the global batch (empty: any)

    def ideal_wall_s(self) -> float:
        return self.max_steps * self.components.step_s(self.nodes)


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    interval_steps: int
    goodput: float
    wall_h: float
    steps_lost: float
    recoveries: dict[str, float]
    spot_cost: float
    cost_vs_on_demand: float
    finished: bool


@dataclass(frozen=True)
class Plan:
    inputs: PlanInputs
    mtbf_s: float                   # the job's mean time between losses
    young_daly_steps: int           # from the time between the losses that lose work (work_loss_mtbf_s)
    on_demand_cost: float
    rows: list[PolicyResult]        # per policy: at the manifest's (or YD) interval, at YD, at the best
    young_daly_mtbf_s: float        # the M of young_daly_steps


def inputs_from_manifest(job: PretrainJob, nodes: int, samples_per_node_s: float, min_workers: int | None = None,
                         **overrides) -> PlanInputs:
    """The manifest's steps, batch, worker range (its min/max share scaled to ``nodes`` unless
    ``min_workers`` is given) and checkpoint interval."""
    if nodes < 1 or samples_per_node_s <= 0:
        raise PermanentError("--nodes must be >= 1 and --samples-per-node-s > 0")
    if min_workers is not None and not 1 <= min_workers <= nodes:
        raise PermanentError(f"--min-workers must be between 1 and --nodes ({nodes}), got {min_workers}")
    workers = job.spec.resources.workers
    min_share = 1.0 if isinstance(workers, int) else workers.min / workers.max
    every = job.spec.checkpoint.every_steps
    comp = overrides.pop("components", None) or Components(step_s_one=0.0)
    t = job.spec.training
    comp = replace(comp, step_s_one=t.global_batch_size / samples_per_node_s)
    min_workers = min_workers or max(1, round(nodes * min_share))
    sizes = tuple(valid_worker_counts(t.global_batch_size, t.micro_batch_size, range(min_workers, nodes + 1)))
    if not sizes:
        raise PermanentError(f"no world size from {min_workers} to {nodes} keeps global_batch_size "
                             f"{t.global_batch_size} with micro_batch_size {t.micro_batch_size}: pick a global "
                             "batch divisible by micro x workers for some count in the range")
    return PlanInputs(nodes=nodes, min_workers=min_workers, max_steps=t.max_steps,
                      interval_steps=every if isinstance(every, int) else None, components=comp, sizes=sizes,
                      **overrides)


def timelines(inp: PlanInputs, horizon_s: float) -> list[Timeline]:
    out = []
    for seed in range(inp.seeds):
        rng = np.random.default_rng(seed)
        if inp.trace is not None:
            out.append(from_trace(inp.trace, inp.nodes, horizon_s, rng))
        else:
            out.append(from_rate(inp.rate_per_node_h, inp.burst, inp.return_s, inp.nodes, horizon_s, rng))
    return out


def mean_outcome(inp: PlanInputs, policy: str, interval: int, lines: list[Timeline]) -> PolicyResult:
    sc = Scenario(policy, inp.nodes, inp.min_workers, inp.max_steps, interval, inp.notice_s, inp.sizes)
    outs = [simulate(sc, inp.components, line, np.random.default_rng(1000 + i)) for i, line in enumerate(lines)]
    return _summary(inp, policy, interval, outs)


def _summary(inp: PlanInputs, policy: str, interval: int, outs: list[Outcome]) -> PolicyResult:
    wall = float(np.mean([o.wall_s for o in outs]))
    spot = float(np.mean([o.node_s for o in outs])) / 3600.0 * inp.spot_price
    recoveries = {k: float(np.mean([o.recoveries[k] for o in outs])) for k in outs[0].recoveries}
    return PolicyResult(policy, interval, float(np.mean([o.goodput for o in outs])), wall / 3600.0,
                        float(np.mean([o.steps_lost for o in outs])), recoveries, spot,
                        spot / on_demand_cost(inp), all(o.finished for o in outs))


def on_demand_cost(inp: PlanInputs) -> float:
    """The same steps on on-demand nodes that are never taken (no checkpoint needed for losses)."""
    return inp.nodes * inp.ideal_wall_s() / 3600.0 * inp.on_demand_price


def job_mtbf_s(inp: PlanInputs, lines: list[Timeline]) -> float:
    """Mean time between capacity losses the job sees (a burst is one loss), over the timelines."""
    rates = [line.drops_per_hour() for line in lines]
    per_hour = float(np.mean(rates)) if rates else 0.0
    return 3600.0 / per_hour if per_hour > 0 else float("inf")


def work_loss_mtbf_s(inp: PlanInputs, mtbf_s: float) -> float:
    """The M of the trainer's Young–Daly interval: the time between losses that lose work. With a
    notice that fits a checkpoint none does, and the trainer keeps its prior (checkpoint/interval.py)."""
    return PRIOR_MTBP_S if notice_fits(inp.notice_s, inp.components.checkpoint_s) else mtbf_s


def young_daly_steps(inp: PlanInputs, mtbf_s: float) -> int:
    """The trainer's `every_steps: auto` interval for this job: sqrt(2 C M) / step time."""
    c = inp.components
    if mtbf_s == float("inf") or c.checkpoint_s == 0:
        return inp.max_steps
    steps = round(young_daly_interval_s(c.checkpoint_s, mtbf_s) / c.step_s(inp.nodes))
    return max(1, min(inp.max_steps, steps))


def best_interval(inp: PlanInputs, policy: str, lines: list[Timeline], around: int) -> PolicyResult:
    """The grid point around ``around`` with the highest mean goodput."""
    candidates = sorted({max(1, min(inp.max_steps, round(around * g))) for g in _GRID})
    results = [mean_outcome(inp, policy, k, lines) for k in candidates]
    return max(results, key=lambda r: r.goodput)


def plan(inp: PlanInputs) -> Plan:
    horizon = 20.0 * inp.ideal_wall_s() + 48 * 3600.0  # runs that do not finish by then are marked
    lines = timelines(inp, horizon)
    mtbf = job_mtbf_s(inp, lines)
    yd_mtbf = work_loss_mtbf_s(inp, mtbf)
    yd = young_daly_steps(inp, yd_mtbf)
    rows = []
    for policy in POLICIES:
        configured = inp.interval_steps or yd
        rows.append(mean_outcome(inp, policy, configured, lines))
        if configured != yd:
            rows.append(mean_outcome(inp, policy, yd, lines))
        rows.append(best_interval(inp, policy, lines, yd))
    return Plan(inp, mtbf, yd, on_demand_cost(inp), rows, yd_mtbf)
