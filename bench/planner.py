"""How long `bertctl plan` takes, and what it predicts, for bert-large on the Parcae trace.

For 64, 128 and 512 nodes (AWS notice, the inputs of docs/spot.md): the planner's wall time, and
per policy the goodput, wall hours and cost against on-demand at the best interval it found.

    .venv/bin/python bench/planner.py [--seeds 5]

The last line is ``ratios: plan_s_512=<x> goodput_elastic/relaunch_64=<x> _128=<x> _512=<x>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.spec import load_manifest  # noqa: E402
from orchestrator.spot.planner import inputs_from_manifest, plan  # noqa: E402
from orchestrator.spot.planner_model import components_from  # noqa: E402
from orchestrator.spot.traces import load_trace  # noqa: E402

MANIFEST = ROOT / "orchestrator/spot/examples/bert-large-spot.yaml"
TRACE = ROOT / "orchestrator/spot/traces_data/aws-p3-2xlarge-parcae.csv"
TIMES = ["checkpoint=10", "relaunch=120", "step_overhead=0.3", "detect=10", "load=20"]


def one(nodes: int, seeds: int) -> tuple[float, dict[str, object]]:
    inp = inputs_from_manifest(load_manifest(MANIFEST), nodes, 200.0, components=components_from(TIMES),
                               notice_s=120.0, spot_price=0.918, on_demand_price=3.06, trace=load_trace(TRACE),
                               seeds=seeds)
    start = time.perf_counter()
    result = plan(inp)
    elapsed = time.perf_counter() - start
    best = {p: max((r for r in result.rows if r.policy == p), key=lambda r: r.goodput) for p in ("elastic", "relaunch")}
    return elapsed, best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'nodes':>5} | {'plan s':>6} | policy   | interval | goodput | wall h | vs on-demand")
    timings, ratios = {}, {}
    for nodes in (64, 128, 512):
        timings[nodes], best = one(nodes, args.seeds)
        for policy, r in best.items():
            print(f"{nodes:>5} | {timings[nodes]:6.2f} | {policy:<8} | {r.interval_steps:>8} | {r.goodput:7.3f} | "
                  f"{r.wall_h:6.2f} | {r.cost_vs_on_demand:.2f}")
        ratios[nodes] = best["elastic"].goodput / best["relaunch"].goodput
    print(f"ratios: plan_s_512={timings[512]:.2f} goodput_elastic/relaunch_64={ratios[64]:.2f} "
          f"_128={ratios[128]:.2f} _512={ratios[512]:.2f}")


if __name__ == "__main__":
    main()
