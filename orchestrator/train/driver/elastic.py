"""An attempt that changes its worker group instead of ending: shrink on lost capacity, grow when it
comes back (docs/spot.md, "Elastic inside an attempt").

Ray Train's controller restarts the worker group on a failure its failure policy retries, at the
size its scaling policy picks; the new group resumes from the newest committed checkpoint (the
loop's ordinary resume, resharded through the universal format on a new world size). bertctl
replaces both policies of the controller:

* ``CapacityRecovery`` retries a failure only when capacity was lost: a node under a preemption
  notice (Ray Train's ``PreemptionError``, or the loop's ``NodePreempted`` after its just-in-time
  checkpoint), a worker process that died with its node, or the loop's ``GrowRequested``. Every
  other ending (NaN loss, bad data or config, a fenced attempt, out of memory, the driver's own
  preemption) ends the attempt at once and the manager's policy decides, as for a fixed attempt.
* ``CheckpointBoundaryElastic`` keeps Ray's elastic sizing for a new group (as many workers as
  the cluster holds, between min and max, asking the autoscaler for max) but never resizes a
  running group: a running group would lose its steps since the last checkpoint, so the loop
  grows at its next checkpoint instead. Below ``min`` for ``CAPACITY_WAIT_S`` after a loss, it
  ends the attempt (``InsufficientCapacity``): the manager's policy decides on the relaunch.

The two policies live in driver/ray_policies.py (they derive from Ray Train's internals); this
module holds what they decide by. A ``ResizeJournal`` actor on the driver's node (never on a spot node) collects the times of each
resize from the old group, the controller and the new group, and hands the new group's rank 0 the
records it reports to the manager in its heartbeats.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from orchestrator.contract import ExitCode
from orchestrator.spot.rules import grow_pays, speedup
from orchestrator.train.driver import node_probe
from orchestrator.train.worker.errors import NodeLost

log = logging.getLogger("bertctl.train.elastic")

# How long an elastic attempt waits, after losing capacity, for the cluster to hold min workers
# again before it ends (a first start waits for as long as the manager's startup liveness allows;
# capacity_wait_s keeps a re-form inside the heartbeat timeout).
CAPACITY_WAIT_S = 120.0
# In-attempt recoveries before the attempt ends anyway (then the manager's retry budget counts).
MAX_RECOVERIES = 100
# Ray declares a node dead after its missed health checks (3 x 1 s on the simulated cluster, about
# 30 s with Ray's defaults on a real one); a failed collective waits this long for that verdict.
NODE_DEATH_WAIT_S = 45.0
# ... unless every node's raylet answers its health check this many times in a row, 0.5 s apart: then
# no node is being lost and the failure is a crash (node_probe.py).
CRASH_PROBES = 2
GROW_SETTLE_S = 10.0
_KEEP_RECORDS = 8


class InsufficientCapacity(NodeLost):
    """Fewer than resources.workers.min workers fit the cluster for too long after a loss: the
    attempt ends as node_lost (the loss is why it ends) and the manager relaunches it."""


class RecoveriesSpent(NodeLost):
    """The attempt lost capacity once more after MAX_RECOVERIES re-forms: it ends as node_lost
    (capacity is why it ends, not a crash) and the manager's retry budget decides."""


class ResizeJournal:
    """Times of each resize of one attempt, from the three places that see a part of it."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.pending: dict[str, Any] | None = None
        self.world: int | None = None
        self.abandoning = False
        self.losses = 0          # capacity losses of this attempt (a notice during a start too)
        self.worker_s = 0.0        # worker-seconds the attempt's groups ran, up to their last step
        self.running_since: float | None = None  # the running group's first step
        self.created_at = time.time()  # with the attempt (driver/launch.py starts it)
        self.gave_up: str | None = None  # why the controller stopped re-forming on a capacity loss
        self.departed: set[int] = set()  # Ray Train ranks that left a group re-formed in place
        self.restart_costs: list[float] = []  # what each re-form with new worker processes cost
        self.in_place_costs: list[float] = []  # what each re-form in place cost
        self.complete = False  # the running group committed max_steps
        self.step_s: dict[int, float] = {}  # seconds per step measured by groups of each size

    def left(self, kind: str, step: int, world: int, last_step_at: float) -> None:
        """The old group's rank 0, right before its workers end to re-form (after any checkpoint)."""
        self.pending = {"kind": kind, "last_step": step, "from_world": world, "last_step_at": last_step_at}
        self._stopped(last_step_at)

    def _stopped(self, at: float) -> None:
        if self.running_since is not None and self.world:
            self.worker_s += self.world * max(0.0, at - self.running_since)
        self.running_since = None

    def reformed_in_place(self, step: int, world: int, last_step_at: float, decided_at: float,
                          departed: list[int]) -> None:
        """The survivors of a noticed loss formed their group in place (worker/regroup.py): the
        old group's side of the record and the re-form's decision, in one call from the new rank 0."""
        self.left("shrink_notice", step, world, last_step_at)
        self.pending["in_place"] = True
        self.failed(decided_at, noticed=True, in_place=True)
        self.departed |= set(departed)

    def finish(self) -> None:
        self.complete = True

    def measured(self, world: int, step_s: float) -> None:
        """A group's rank 0, at its checkpoints: the median of its recent steps. Each size keeps
        its best sustained figure: a group slowed for a while by its neighbours (a node starting
        beside it, another job) does not make that size look slow for the rest of the attempt."""
        self.step_s[world] = min(step_s, self.step_s.get(world, step_s))

    def in_place_state(self) -> tuple[set[int], bool]:
        """For the controller's failure policy: the ranks that left in place, and whether the run is complete."""
        return self.departed, self.complete

    def abandoned(self) -> None:
        """The group being formed ends before its first step (a node of it came under notice)."""
        self.abandoning = True

    def failed(self, at: float, noticed: bool = False, in_place: bool = False) -> None:
        """The controller decided to re-form the group (its failure policy said retry; ``noticed``:
        the capacity went with a notice), or the survivors re-form in place (``in_place``). A group
        that ends before its first step (abandoned under a notice, or a node of it lost) continues
        the record in progress: one pause, until a group steps (and the first group of an attempt
        is still no resize). Every decision but a grow's is a capacity loss. The controller's
        re-form replaces every worker: the ranks that had left in place are gone with their group,
        and the new group's ranks are numbered afresh."""
        if not in_place:
            self.departed = set()
        abandoned, self.abandoning = self.abandoning, False
        self._stopped(at)  # a group lost without word: it ran until about now
        never_stepped = abandoned or self.world is None or (self.pending is not None and "failed_at" in self.pending)
        if never_stepped and (self.pending is not None or self.world is None):
            self.losses += 1
            if self.pending is not None:
                # A grow cut short: no larger group is coming; the first loss that cut it is what happened.
                self.pending.setdefault("interrupted_by", "shrink_notice" if noticed else "shrink_lost")
            return
        if self.pending is None:
            self.pending = {"kind": "shrink_lost", "from_world": self.world}
        if self.pending["kind"] != "grow":
            self.losses += 1
        self.pending["failed_at"] = at

    def give_up(self, why: str) -> None:
        """The controller's failure policy ends the attempt on a capacity loss it will not re-form
        for; the driver names it (``ended_on_capacity``) rather than leave an untyped failure."""
        self.gave_up = why

    def ended_on_capacity(self) -> str | None:
        return self.gave_up

    def growing_from(self) -> int | None:
        """The size of the group that ended to grow, while that grow is pending (and no loss cut it short)."""
        return self.pending.get("from_world") if self.pending_kind() == "grow" else None

    def pending_kind(self) -> str | None:
        """What the group being re-formed is for, as far as the journal knows yet ("interrupted":
        a node was lost while it formed, whatever it was for)."""
        if self.pending is None:
            return None
        return "interrupted" if "interrupted_by" in self.pending else self.pending["kind"]

    def formed(self, world: int, resumed_from_step: int, started_at: float, loaded_at: float,
               first_step_at: float) -> list[dict[str, Any]]:
        """The new group's rank 0 after its first step; returns every record of this attempt."""
        pending, self.pending, self.world = self.pending, None, world
        self.running_since = first_step_at
        if pending is not None and pending["kind"] == "grow" and world <= (pending.get("from_world") or 0):
            # A loss cut the grow's start short and it came back no larger: what happened is that loss.
            pending = {**pending, "kind": pending.get("interrupted_by", "shrink_lost")}
        if pending is not None:
            self.records.append(_record(len(self.records) + 1, pending, world, resumed_from_step, started_at,
                                        loaded_at, first_step_at))
            cost = _reform_cost(self.records[-1])
            if cost is not None:
                (self.in_place_costs if pending.get("in_place") else self.restart_costs).append(cost)
        return self.records[-_KEEP_RECORDS:]

    def work_loss_mtbp_s(self, now: float) -> float | None:
        """Seconds of this attempt per re-form that redid steps (None before one): how often
        checkpointing more often would have saved work. A shrink that checkpointed inside its
        notice lost nothing, so it does not count (`every_steps: auto`, checkpoint/interval.py)."""
        lossy = sum(1 for r in self.records if _redid_steps(r))
        return max(0.0, now - self.created_at) / lossy if lossy else None

    def widen_terms(self, now: float) -> tuple[float | None, float | None, tuple[tuple[int, float], ...]]:
        """Under a notice, with idle capacity (worker/regroup.py ``Headroom``): this attempt's
        worker-seconds per capacity loss, how much dearer a re-form with new processes has been
        than one in place (None where nothing is measured yet), and the step times of each size."""
        per_loss = self._worker_s(now) / self.losses if self.losses else None
        step_s = tuple(sorted(self.step_s.items()))
        if not self.restart_costs:
            return per_loss, None, step_s
        in_place = statistics.median_high(self.in_place_costs) if self.in_place_costs else 0.0
        return per_loss, max(0.0, statistics.median_high(self.restart_costs) - in_place), step_s

    def _worker_s(self, now: float) -> float:
        running = self.world * max(0.0, now - self.running_since) if self.running_since and self.world else 0.0
        return self.worker_s + running

    def should_grow(self, world: int, added: int, now: float) -> tuple[bool, str]:
        """Whether the running group of ``world`` should re-form now with ``added`` more workers:
        the planner's ``grow_pays`` rule on this attempt's own loss rate, the cost of its re-forms
        that started new worker processes, as a grow does (an in-place re-form is far cheaper and
        says nothing of it), and how much faster the larger group steps. Before the attempt has
        lost capacity, and before it has measured such a re-form, it grows, unless a group of the
        larger size was measured no faster."""
        gain = speedup(self.step_s, world, world + added)
        if gain <= 1:
            return False, (f"a group of {world + added} took {self.step_s[world + added]:.3f} s a step here, "
                           f"one of {world} {self.step_s[world]:.3f} s: no faster, so no grow pays its pause")
        worker_s = self.worker_s + (world * max(0.0, now - self.running_since) if self.running_since else 0.0)
        if not self.losses or not self.restart_costs:
            return True, "no loss, or no re-form with new worker processes, measured in this attempt yet"
        next_loss_s, cost_s = worker_s / self.losses / world, statistics.median_high(self.restart_costs)
        grow = grow_pays(next_loss_s, world, added, cost_s, gain)
        return grow, (f"{added} more worker(s) ({gain:.2f} x as fast) {'gain' if grow else 'would not gain'} "
                      f"more than a {cost_s:.1f} s re-form before the next loss (expected in {next_loss_s:.0f} s: "
                      f"{self.losses} loss(es) in {worker_s:.0f} worker-seconds)")


def _redid_steps(record: dict[str, Any]) -> bool:
    """The group resumed from before the step it reached (a noticed loss whose save missed the
    deadline), or could not say which step it reached (lost without notice: from the newest commit)."""
    last = record["last_step"]
    return last is None or last > record["resumed_from_step"]


def _reform_cost(record: dict[str, Any]) -> float | None:
    """What re-forming cost the group once it had decided to: starting, loading, the first step
    (and for a grow, ending the old group, which a grow adds to every re-form)."""
    parts = [record["reform_s"], record["load_s"], record["first_step_s"]]
    if record["kind"] == "grow":
        parts.append(record["detect_s"])
    return None if any(p is None for p in parts) else round(sum(parts), 3)


def _record(n: int, pending: dict[str, Any], world: int, resumed: int, started_at: float, loaded_at: float,
            first_step_at: float) -> dict[str, Any]:
    last_at, failed_at = pending.get("last_step_at"), pending.get("failed_at")

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(max(0.0, b - a), 3)

    return {"n": n, "kind": pending["kind"], "from_world": pending.get("from_world"), "to_world": world,
            "last_step": pending.get("last_step"), "resumed_from_step": resumed,
            "pause_s": span(last_at, first_step_at), "detect_s": span(last_at, failed_at),
            "reform_s": span(failed_at, started_at), "load_s": span(started_at, loaded_at),
            "first_step_s": span(loaded_at, first_step_at)}


def start_journal(name: str):
    """The journal actor, pinned to this (the driver's) node: it must outlive every spot node."""
    return on_this_node(ResizeJournal).options(name=name, get_if_exists=True).remote()


def on_this_node(cls):
    """``cls`` as a 0-CPU actor class pinned to this (the driver's) node."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0, label_selector={ray._raylet.RAY_NODE_ID_KEY: node})(cls)


def capacity_lost(error: BaseException, known_dead: set[str], wait_s: float | None = None) -> bool:
    """The failure is lost or changed capacity, never the run's own fault (see the module doc): the
    loop said so (``CapacityChanged``), or a node of the cluster died since the last decision. The
    survivors' collectives fail the moment a peer's node is killed, seconds before Ray's health
    checks declare that node dead, so a failure without a dead node waits that long for one
    (``wait_s``, by default NODE_DEATH_WAIT_S as it is when called), unless every node answers
    its health check meanwhile: then nothing is being lost and the failure is a crash."""
    wait_s = NODE_DEATH_WAIT_S if wait_s is None else wait_s
    from orchestrator.train.driver.outcome import _unwrap, ending_of, fenced
    from orchestrator.train.worker.errors import CapacityChanged

    code, _, _ = ending_of(error)
    if code is not ExitCode.INFRASTRUCTURE:
        return False  # NaN, data, config, storage, memory, the driver's own preemption: not ours to retry
    if fenced(error):
        return False  # a newer attempt exists
    if any(isinstance(e, CapacityChanged) for e in _unwrap(error)):
        return True
    deadline, answered = time.monotonic() + wait_s, 0
    while True:
        if dead_nodes() - known_dead:
            return True
        if time.monotonic() >= deadline:
            return False  # a process died or a collective failed with every node alive: not capacity
        answered = answered + 1 if node_probe.every_node_answers() else 0
        if answered >= CRASH_PROBES:
            log.info("every node of the cluster answers: the failure is a crash, not lost capacity")
            return False
        time.sleep(0.5)


def draining_nodes() -> set[str]:
    """Ids (hex) of the nodes Ray reports as draining: under a preemption notice or being scaled down."""
    import ray

    return set(ray._private.state.state.get_draining_nodes())


def dead_nodes() -> set[str]:
    """Ids of the nodes Ray has declared dead."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}


def capacity_wait_s(heartbeat_timeout_s: float) -> float:
    """How long a re-forming group waits for min workers: CAPACITY_WAIT_S, and always well inside
    the manager's heartbeat timeout (no heartbeat comes while no group runs)."""
    return min(CAPACITY_WAIT_S, heartbeat_timeout_s / 2)
