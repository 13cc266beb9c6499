"""Preemption the way a cloud does it, on the simulated spot cluster (``sim_cluster.py``).

- ``preempt(node, notice_s)``: the spot notice. Ray's GCS is told to drain the node with reason
  PREEMPTION and a deadline ``notice_s`` away (what ``ray start`` sends on SIGTERM in a KubeRay
  pod, and what Ray Train's preemption watcher reads); at the deadline the instance is gone:
  every process of the node is SIGKILLed. Cloud windows: AWS 120 s, GCP 30 s, a GKE pod ~15 s.
- ``kill(node)``: a loss without notice (host failure, a spot reclaim whose notice never came):
  SIGKILL at once.
- Capacity: a taken node also takes its slot in the pool (``capacity.json``), so the autoscaler
  cannot simply relaunch it; ``restore`` gives slots back and the autoscaler launches into them
  when there is demand, after the cluster's provisioning delay.

The calling process talks to the cluster's GCS, so its environment must hold
``SimCluster.client_environ()`` (the token by file) before Ray is imported; the CLI does this.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass

import psutil

from orchestrator.errors import PermanentError
from orchestrator.spot.config import NODE_GROUP_LABEL
from orchestrator.spot.pool import append_event, read_capacity, write_capacity
from orchestrator.spot.sim_cluster import SimCluster

# Notice windows the clouds give before taking a spot node (seconds).
NOTICE_S = {"aws": 120.0, "gcp": 30.0, "gke-pod": 15.0, "azure": 30.0}
_ALIVE = 0  # GcsNodeInfo.state ALIVE


@dataclass(frozen=True)
class NodeView:
    node_id: str
    node_type: str
    alive: bool
    draining_deadline_ms: int | None   # set while Ray reports the node draining (0: no deadline)
    death_reason: str                  # e.g. AUTOSCALER_DRAIN_PREEMPTED once gone after a notice


class Chaos:
    def __init__(self, cluster: SimCluster, seed: int = 0):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self._gcs = None
        self._timers: list[threading.Timer] = []

    @property
    def gcs(self):
        if self._gcs is None:
            from ray._raylet import GcsClient  # the caller's environment carries the token path

            self._gcs = GcsClient(address=self.cluster.address)
        return self._gcs

    # -- what is there ---------------------------------------------------------------------------

    def nodes(self) -> list[NodeView]:
        """Every worker node Ray knows of (the head is on-demand and left out), live ones first."""
        draining = self.gcs.get_draining_nodes()
        views = []
        for node_id, info in self.gcs.get_all_node_info().items():
            group = dict(info.labels).get(NODE_GROUP_LABEL, "")
            if group in ("", "head"):
                continue
            hex_id = node_id.hex()
            views.append(NodeView(hex_id, group, info.state == _ALIVE, draining.get(hex_id),
                                  _death_reason(info)))
        return sorted(views, key=lambda v: (not v.alive, v.node_id))

    def live(self, node_type: str | None = None) -> list[NodeView]:
        """Live worker nodes not yet under notice, optionally of one type."""
        return [n for n in self.nodes() if n.alive and n.draining_deadline_ms is None
                and (node_type is None or n.node_type == node_type)]

    def pick(self, node_type: str | None = None) -> NodeView:
        candidates = self.live(node_type)
        if not candidates:
            raise PermanentError(f"no live worker node{' of type ' + node_type if node_type else ''} to take")
        return self.rng.choice(candidates)

    # -- taking nodes ----------------------------------------------------------------------------

    def preempt(self, node: NodeView, notice_s: float) -> float:
        """Drain with reason PREEMPTION and a deadline; the node dies at the deadline. Returns it (epoch s)."""
        if notice_s <= 0:
            self.kill(node)
            return time.time()
        from ray.core.generated import autoscaler_pb2

        deadline = time.time() + notice_s
        self._take_slot(node)
        accepted, why = self.gcs.drain_node(node.node_id, autoscaler_pb2.DrainNodeReason.Value(
            "DRAIN_NODE_REASON_PREEMPTION"), f"spot preemption notice ({notice_s:g} s)", int(deadline * 1000))
        if not accepted:  # PREEMPTION drains are not rejectable; the node goes at the deadline anyway
            append_event(self.cluster.state_dir, "drain_rejected", node_id=node.node_id, why=why)
        append_event(self.cluster.state_dir, "notice", node_id=node.node_id, node_type=node.node_type,
                     notice_s=notice_s)
        timer = threading.Timer(notice_s, self._remove, args=(node, "deadline"))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)
        return deadline

    def kill(self, node: NodeView) -> int:
        """SIGKILL the node now (no notice); returns how many processes were killed."""
        self._take_slot(node)
        return self._remove(node, "killed")

    def _remove(self, node: NodeView, why: str) -> int:
        pids = _node_tree(self.cluster.node_processes(node.node_id))
        for proc in pids:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        append_event(self.cluster.state_dir, why, node_id=node.node_id, node_type=node.node_type,
                     processes=len(pids))
        return len(pids)

    def _take_slot(self, node: NodeView) -> None:
        """The pool loses the slot: it now holds one node fewer than it holds now."""
        capacity = read_capacity(self.cluster.state_dir)
        held = len(self.live(node.node_type))
        capacity[node.node_type] = max(0, min(capacity.get(node.node_type, held), held) - 1)
        write_capacity(self.cluster.state_dir, capacity)

    # -- giving capacity back --------------------------------------------------------------------

    def restore(self, node_type: str, count: int = 1) -> int:
        """Give the pool ``count`` more slots (at most its max_workers); returns the new capacity."""
        return self.set_capacity(node_type, read_capacity(self.cluster.state_dir).get(node_type, 0) + count)

    def set_capacity(self, node_type: str, slots: int) -> int:
        limit = self.max_workers(node_type)
        capacity = read_capacity(self.cluster.state_dir)
        capacity[node_type] = max(0, min(slots, limit))
        write_capacity(self.cluster.state_dir, capacity)
        append_event(self.cluster.state_dir, "capacity", node_type=node_type, slots=capacity[node_type])
        return capacity[node_type]

    def max_workers(self, node_type: str) -> int:
        import yaml

        config = yaml.safe_load((self.cluster.state_dir / "autoscaler.yaml").read_text())
        types = config["available_node_types"]
        if node_type not in types or node_type == config["head_node_type"]:
            names = sorted(t for t in types if t != config["head_node_type"])
            raise PermanentError(f"no worker group {node_type!r} in this cluster; groups: {names}")
        return int(types[node_type]["max_workers"])

    def wait(self) -> None:
        """Until every pending notice has reached its deadline and its node is gone."""
        for timer in self._timers:
            timer.join()
        self._timers.clear()


def _death_reason(info) -> str:
    if info.state == _ALIVE or not info.HasField("death_info"):
        return ""
    return type(info.death_info).Reason.Name(info.death_info.reason)


def _node_tree(raylets: list[int]) -> list[psutil.Process]:
    """The raylet and everything it started (agents, Ray workers): the whole simulated instance.

    The raylet comes first: killed after one of its agents, it would notice the agent's death and
    unregister itself as a crash, and Ray would not record the loss as the preemption it is."""
    procs = []
    for pid in raylets:
        try:
            root = psutil.Process(pid)
            procs.extend([root, *root.children(recursive=True)])
        except psutil.Error:
            continue
    return procs


def notice_seconds(value: str) -> float:
    """A number of seconds, or a cloud's name (aws, gcp, gke-pod, azure)."""
    if value in NOTICE_S:
        return NOTICE_S[value]
    try:
        seconds = float(value)
    except ValueError:
        raise PermanentError(f"notice {value!r}: give seconds or one of {sorted(NOTICE_S)}") from None
    if seconds < 0 or seconds != seconds:
        raise PermanentError(f"notice {value!r} must be >= 0 seconds")
    return seconds

