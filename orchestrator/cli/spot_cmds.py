"""`bertctl spot ...` (a simulated spot cluster to rehearse on) and `bertctl plan` (goodput and cost)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.cli.common import app, console

spot_app = typer.Typer(help="A simulated spot cluster on this machine: Ray's autoscaler over simulated nodes, "
                            "preemptions with and without notice, trace replay.", no_args_is_help=True)
app.add_typer(spot_app, name="spot")

STATE_DIR = typer.Option(None, "--state-dir", envvar="BERTCTL_SPOT_DIR",
                         help="The cluster's state directory (default: ~/.bertctl/spot).")
NODE = typer.Option(None, "--node", help="Node id (hex) to take; default: a random live node.")
NODE_TYPE = typer.Option(None, "--type", help="Worker group to take a node from (default: any).")


def _cluster(state_dir: Optional[Path], config=None):
    from orchestrator.spot.sim_cluster import SimCluster

    return SimCluster(state_dir or Path.home() / ".bertctl" / "spot", config)


def _chaos(state_dir: Optional[Path], seed: int = 0):
    """A chaos driver whose process may talk to the cluster's GCS (set before Ray is imported)."""
    from orchestrator.spot.chaos import Chaos

    cluster = _cluster(state_dir)
    os.environ.update(cluster.client_environ())
    return Chaos(cluster, seed=seed)


@spot_app.command("up")
def up_cmd(config: Path = typer.Option(..., "--config", help="Cluster config YAML (head, node_types, "
                                       "provisioning_delay_s); see docs/spot.md."),
           state_dir: Optional[Path] = STATE_DIR) -> None:
    """Start the on-demand head and Ray's autoscaler over simulated spot nodes."""
    from orchestrator.spot.config import load_config

    cluster = _cluster(state_dir, load_config(config))
    state = cluster.up()
    console.print(f"simulated spot cluster at 127.0.0.1:{state['port']} (state {cluster.state_dir}); run jobs "
                  f"on it with `BERTCTL_RAY_CLUSTER_DIR={cluster.state_dir} bertctl server`", highlight=False)


@spot_app.command("down")
def down_cmd(state_dir: Optional[Path] = STATE_DIR) -> None:
    """Stop every process of the simulated cluster (and only those)."""
    cluster = _cluster(state_dir)
    cluster.down()
    console.print(f"stopped the simulated spot cluster in {cluster.state_dir}", highlight=False)


@spot_app.command("nodes")
def nodes_cmd(state_dir: Optional[Path] = STATE_DIR,
              as_json: bool = typer.Option(False, "--json", help="One JSON object per node.")) -> None:
    """Worker nodes as Ray sees them: alive, draining (with its deadline) or gone (and why)."""
    for node in _chaos(state_dir).nodes():
        if as_json:
            console.print(json.dumps(node.__dict__), highlight=False, soft_wrap=True)
            continue
        state = "alive" if node.alive else f"gone ({node.death_reason or 'unknown'})"
        if node.draining_deadline_ms is not None:
            state = f"draining, deadline {node.draining_deadline_ms / 1000:.1f}"
        console.print(f"{node.node_id}  {node.node_type:<16} {state}", highlight=False)


@spot_app.command("preempt")
def preempt_cmd(notice: str = typer.Option("gcp", "--notice", help="Seconds, or aws (120), gcp (30), "
                                           "gke-pod (15), azure (30); 0 = no notice."),
                node: Optional[str] = NODE, node_type: Optional[str] = NODE_TYPE,
                state_dir: Optional[Path] = STATE_DIR) -> None:
    """Take one node the way a cloud does: a PREEMPTION drain with a deadline, then gone at it."""
    from orchestrator.spot.chaos import notice_seconds

    chaos = _chaos(state_dir)
    victim = _victim(chaos, node, node_type)
    seconds = notice_seconds(notice)
    chaos.preempt(victim, seconds)
    console.print(f"notice to {victim.node_id} ({victim.node_type}): gone in {seconds:g} s", highlight=False)
    chaos.wait()


@spot_app.command("kill")
def kill_cmd(node: Optional[str] = NODE, node_type: Optional[str] = NODE_TYPE,
             state_dir: Optional[Path] = STATE_DIR) -> None:
    """Take one node without notice (its processes SIGKILLed)."""
    chaos = _chaos(state_dir)
    victim = _victim(chaos, node, node_type)
    count = chaos.kill(victim)
    console.print(f"killed {victim.node_id} ({victim.node_type}): {count} process(es)", highlight=False)


@spot_app.command("restore")
def restore_cmd(node_type: str = typer.Option(..., "--type", help="Worker group."),
                count: int = typer.Option(1, "--count", min=1, help="Slots to give back."),
                state_dir: Optional[Path] = STATE_DIR) -> None:
    """Give a worker group's pool capacity back; the autoscaler launches into it when there is demand."""
    slots = _chaos(state_dir).restore(node_type, count)
    console.print(f"{node_type}: capacity {slots} node(s)", highlight=False)


@spot_app.command("replay")
def replay_cmd(trace: Path = typer.Option(..., "--trace", help="A trace file, either format (real AWS "
                                                      "traces: orchestrator/spot/traces_data/)."),
               node_type: str = typer.Option(..., "--type", help="Worker group whose pool follows the trace."),
               hour_s: float = typer.Option(60.0, "--hour-s", help="Wall seconds per trace hour."),
               notice: str = typer.Option("aws", "--notice", help="Notice per removal (seconds or a cloud)."),
               start_h: float = typer.Option(0.0, "--start-h", help="Trace hour to start at."),
               duration_h: Optional[float] = typer.Option(None, "--duration-h", help="Trace hours to replay."),
               seed: int = typer.Option(0, "--seed", help="Which live nodes are taken."),
               state_dir: Optional[Path] = STATE_DIR) -> None:
    """Replay a spot trace compressed in time: its removals become noticed preemptions, its adds capacity."""
    from orchestrator.spot.chaos import notice_seconds
    from orchestrator.spot.replay import replay, schedule
    from orchestrator.spot.traces import load_trace

    chaos = _chaos(state_dir, seed)
    changes = schedule(load_trace(trace), chaos.max_workers(node_type), hour_s, start_h, duration_h)

    def show(change, taken):
        console.print(f"t={change.at_s:7.1f}s capacity {change.capacity} took {len(taken)}", highlight=False)

    totals = replay(chaos, node_type, changes, notice_seconds(notice), on_change=show)
    console.print(f"replayed {len(changes)} change(s): {totals}", highlight=False)


def _victim(chaos, node_id: Optional[str], node_type: Optional[str]):
    from orchestrator.errors import PermanentError

    if node_id is None:
        return chaos.pick(node_type)
    for node in chaos.live():
        if node.node_id == node_id:
            return node
    raise PermanentError(f"no live worker node {node_id}; see `bertctl spot nodes`")



_TIMES_HELP = ("Component time NAME=SECONDS, repeatable: checkpoint (pause per save, default 2), relaunch (loss to "
               "first step of a new attempt, 19.3), relaunch_placed (its last part, once its group holds its nodes; "
               "default all of it), detect (4.5), load (4.1), reform (re-forming on the survivors, "
               "5), grow (5), step_overhead (per step beyond the data-parallel share, 0). Defaults: bench/recovery.py.")
_MANIFEST = typer.Argument(..., help="PretrainJob manifest (max_steps, batch, workers, checkpoint).")
_NODES = typer.Option(..., "--nodes", min=1, help="Spot nodes (one worker each) at full capacity.")
_SAMPLES = typer.Option(..., "--samples-per-node-s", help="Sequences per second one node trains.")
_TRACE = typer.Option(None, "--trace", help="Preemption trace (real ones: orchestrator/spot/traces_data/); "
                      "without one: --rate, --burst.")
_RATE = typer.Option(0.61, "--rate", help="Preemptions per node-hour (no trace).")
_BURST = typer.Option(1.0, "--burst", help="Mean nodes taken at once (no trace).")
_RETURN = typer.Option(600.0, "--return-s", help="Mean seconds until a taken node's capacity returns (no trace).")
_NOTICE = typer.Option("aws", "--notice", help="Notice seconds, or aws (120), gcp (30), gke-pod (15); 0 = none.")
_SPOT = typer.Option(0.918, "--spot-price", help="Per node-hour (default: p3.2xlarge spot, us-east-1).")
_ON_DEMAND = typer.Option(3.06, "--on-demand-price", help="Per node-hour (default: p3.2xlarge on demand).")
_MIN = typer.Option(None, "--min-workers", help="Default: the manifest's min/max share of --nodes.")
_TIMES = typer.Option([], "--time", help=_TIMES_HELP)
_SEEDS = typer.Option(3, "--seeds", min=1, help="Capacity timelines averaged over.")
_JSON = typer.Option(False, "--json", help="Print the plan as JSON.")


@app.command("plan")
def plan_cmd(manifest: Path = _MANIFEST, nodes: int = _NODES, samples_per_node_s: float = _SAMPLES,
             trace: Optional[Path] = _TRACE, rate: float = _RATE, burst: float = _BURST, return_s: float = _RETURN,
             notice: str = _NOTICE, spot_price: float = _SPOT, on_demand_price: float = _ON_DEMAND,
             min_workers: Optional[int] = _MIN, time: List[str] = _TIMES, seeds: int = _SEEDS,
             as_json: bool = _JSON) -> None:
    """Predict goodput, wall time and cost on spot nodes, elastic vs relaunch, and the best checkpoint interval."""
    from orchestrator.spec import load_manifest
    from orchestrator.spot.chaos import notice_seconds
    from orchestrator.spot.planner import inputs_from_manifest, plan
    from orchestrator.spot.planner_model import components_from
    from orchestrator.spot.traces import load_trace

    inp = inputs_from_manifest(load_manifest(manifest), nodes, samples_per_node_s, min_workers,
                               components=components_from(time),
                               notice_s=notice_seconds(notice), spot_price=spot_price, on_demand_price=on_demand_price,
                               trace=load_trace(trace) if trace else None, rate_per_node_h=rate, burst=burst,
                               return_s=return_s, seeds=seeds)
    _print_plan(plan(inp), as_json)

def _work_losses(result) -> str:
    if result.young_daly_mtbf_s == result.mtbf_s:
        return "every loss: none has a notice that fits a checkpoint"
    return (f"the losses that lose work: none with a {result.inputs.notice_s:g} s notice, so the trainer's "
            f"{result.young_daly_mtbf_s / 3600:g} h prior")


def _print_plan(result, as_json: bool) -> None:
    from rich.table import Table

    if as_json:
        rows = [r.__dict__ for r in result.rows]
        console.print(json.dumps({"mtbf_s": result.mtbf_s, "young_daly_steps": result.young_daly_steps,
                                  "young_daly_mtbf_s": result.young_daly_mtbf_s,
                                  "on_demand_cost": result.on_demand_cost, "rows": rows}), highlight=False, soft_wrap=True)
        return
    inp = result.inputs
    console.print(f"{inp.nodes} nodes (min {inp.min_workers}), {inp.max_steps} steps, notice {inp.notice_s:g} s; "
                  f"job MTBF {result.mtbf_s:.0f} s; Young–Daly interval {result.young_daly_steps} steps "
                  f"(over {_work_losses(result)}); "
                  f"on-demand {inp.ideal_wall_s() / 3600:.2f} h, cost {result.on_demand_cost:,.0f}", highlight=False)
    table = Table("POLICY", "INTERVAL", "GOODPUT", "WALL h", "STEPS LOST", "RECOVERIES", "SPOT COST", "VS ON-DEMAND")
    for r in result.rows:
        rec = " ".join(f"{k}={v:.0f}" for k, v in r.recoveries.items() if v)
        table.add_row(r.policy, str(r.interval_steps), f"{r.goodput:.3f}", f"{r.wall_h:.2f}" + ("" if r.finished else "+"),
                      f"{r.steps_lost:.0f}", rec or "-", f"{r.spot_cost:,.0f}", f"{r.cost_vs_on_demand:.2f}")
    console.print(table)
