"""An elastic group that re-forms in place on a noticed loss: the survivors keep their processes.

A node of the group comes under notice; every rank checkpoints the step inside the notice (the
loop's preemption path). The noticed node goes only at its deadline, so the old process group
still works: one gather over it (``take_seats``) tells every rank who leaves and where the new
group meets. The ranks on noticed nodes leave their process group and end their training
function. The survivors leave it too, form a new one among themselves (``rejoin``: ranks in the
old order, the new rank 0 hosting the store) and resume from the checkpoint just committed, as
any resumed group does: through the universal format for the new world size, and from the data
cursor for the exact sample order. No process starts and nothing is imported again: about a
second on this machine, against 15-20 s for a new group (bench/reform_in_place.py).

Only when it can keep its promises (``plan``): the checkpoint of the step committed inside the
notice, and at least ``min`` survivors at a count that keeps the global batch (the survivors
beyond the largest such count are released). Otherwise every rank ends and Ray Train re-forms the
group from the newest commit, as before. And only when it pays: a group re-formed in place is its
survivors alone, while one re-formed with new processes takes in the nodes the cluster holds idle
(returned capacity the group has not grown into, and the nodes of released ranks). Rank 0 puts
what the cluster holds and the attempt's record in its seat (``Headroom``) and every rank applies
the grow rule to the difference of the two re-forms' costs.

What it takes around it (docs/spot.md, "Elastic inside an attempt"):

* Ray Train's controller still counts the workers that left. Their functions returned; once their
  node is gone their actors read as dead at every poll, which the failure policy answers with
  NOOP while only departed ranks fail (driver/ray_policies.py).
* Ray Train's own preemption watcher is off for elastic attempts: it would hold the controller
  until the whole group ends. Every rank watches its own node instead (``NodeDrainWatch``).
* ``ray.train.report`` waits for every worker the controller started, so an in-place group never
  calls it: its rank 0 gathers the rows and hands them to the attempt's metrics relay
  (driver/launch.py ``MetricsRelay``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta

from orchestrator.spot.rules import speedup, widen_pays

log = logging.getLogger("bertctl.train.elastic")

DRAIN_POLL_S = 1.0
# A new group waits this long for its members: they are alive and decided together, so a rank
# that does not come within it is gone, and the collective's failure ends the group.
REJOIN_TIMEOUT_S = 120.0


class LeftGroup(Exception):
    """This rank's node is under notice and the survivors re-form in place without it."""


class ReformedInPlace(Exception):
    """This rank trains on in the group the survivors just formed."""


def process_group_backend(on_gpu: bool) -> str:
    """On GPUs, CUDA tensors go over NCCL and the loop's small CPU all-reduces (step metrics,
    preemption flags, checkpoint outcomes) over gloo; pure NCCL rejects CPU tensors."""
    return "cpu:gloo,cuda:nccl" if on_gpu else "gloo"


@dataclass(frozen=True)
class Membership:
    """Where this process stands: its rank in Ray Train's group (fixed for its life) and in the
    process group it trains in now (the same until the group re-forms in place)."""

    train_rank: int
    rank: int
    world_size: int
    local_rank: int
    in_place: bool = False  # the group was re-formed in place (Ray Train's report is off for it)

    @classmethod
    def from_ray_train(cls) -> "Membership":
        import ray.train

        ctx = ray.train.get_context()
        rank = ctx.get_world_rank()
        return cls(rank, rank, ctx.get_world_size(), ctx.get_local_rank())


@dataclass(frozen=True)
class Headroom:
    """Rank 0's look at the cluster and the attempt's record, in its seat: what the choice between
    re-forming in place and re-forming wider is judged on (every rank judges it the same)."""

    free_workers: int                 # workers the free resources of live nodes not under notice hold
    own_bundles: int                  # the group's placement bundles on those nodes, held or spare
    worker_s_per_loss: float | None   # the attempt's worker-seconds per capacity loss (None: no loss yet)
    extra_cost_s: float | None        # a re-form with new processes minus one in place (None: not measured)
    step_s: tuple[tuple[int, float], ...] = ()  # (group size, seconds per step) measured in the attempt

    def idle(self, staying: int) -> int:
        """Workers the cluster could add to a group of ``staying``: free resources, and the group's own
        bundles that nobody staying holds (ranks released, or left earlier, whose nodes are still up).
        Only the plan knows ``staying``: rank 0 cannot tell which bundles sit on noticed nodes."""
        return self.free_workers + max(0, self.own_bundles - staying)

    def added(self, staying: int, valid_counts: list[int]) -> int:
        """Workers a re-form with new processes would add to those staying: it takes idle nodes in."""
        wider = [n for n in valid_counts if staying < n <= staying + self.idle(staying)]
        return max(wider) - staying if wider else 0

    def widen(self, staying: int, valid_counts: list[int]) -> bool:
        """Re-form wider (new processes, idle nodes taken in) rather than in place (rules.widen_pays)."""
        added = self.added(staying, valid_counts)
        gain = speedup(dict(self.step_s), staying, staying + added) if added else None
        return widen_pays(self.worker_s_per_loss, staying, added, self.extra_cost_s, gain)


@dataclass(frozen=True)
class Seat:
    """What each rank tells the others in the gather."""

    train_rank: int
    leaving: bool
    node: str
    host: str
    port: int  # free on this host now: used if this rank becomes the new rank 0
    headroom: Headroom | None = None  # rank 0's only


@dataclass(frozen=True)
class InPlace:
    """The survivors' new group, in the old rank order."""

    survivors: tuple[Seat, ...]
    departed: tuple[int, ...]  # the train ranks that leave

    def membership_of(self, train_rank: int) -> Membership | None:
        """This rank's place in the new group (None: it leaves)."""
        for rank, seat in enumerate(self.survivors):
            if seat.train_rank == train_rank:
                same_node = [s for s in self.survivors if s.node == seat.node]
                return Membership(train_rank, rank, len(self.survivors), same_node.index(seat), in_place=True)
        return None


def take_seats(train_rank: int, leaving: bool, headroom: Headroom | None = None) -> list[Seat]:
    """Collective over the current group: every rank's seat, in rank order."""
    import ray
    import torch.distributed as dist

    seat = Seat(train_rank, leaving, this_node(),
                ray.util.get_node_ip_address(), free_port(), headroom)
    seats: list = [None] * dist.get_world_size()
    dist.all_gather_object(seats, seat)
    return seats


def plan(seats: list[Seat], committed: bool, min_workers: int, valid_counts: list[int]) -> InPlace | None:
    """The in-place group, or None when the group must end and re-form through Ray Train (every
    rank decides the same from the same seats). When the survivors' count breaks the batch rule,
    the group keeps the largest count that holds it (the first survivors, in rank order) and the
    others are released: a group re-formed with new processes could use no more of them either."""
    survivors = tuple(s for s in seats if not s.leaving)
    if not committed or not survivors or len(survivors) == len(seats):
        return None
    fits = [n for n in valid_counts if min_workers <= n <= len(survivors)]
    if not fits:
        return None
    group, released = survivors[:max(fits)], survivors[max(fits):]
    headroom = next((s.headroom for s in seats if s.headroom is not None), None)
    if headroom is not None and headroom.widen(len(group), valid_counts):  # released ranks' bundles are idle
        log.info("the group re-forms with new processes, taking %d idle worker(s) in, rather than in "
                 "place (%s)", headroom.added(len(group), valid_counts), headroom)
        return None
    return InPlace(group, tuple(s.train_rank for s in seats if s.leaving or s in released))


def rejoin(membership: Membership, master: Seat, backend: str) -> None:
    """Leave the old process group and form the new one (every survivor, together)."""
    import torch.distributed as dist

    leave_group()
    # What Ray Train's torch setup exports on a worker; DeepSpeed reads them.
    os.environ.update(RANK=str(membership.rank), WORLD_SIZE=str(membership.world_size),
                      LOCAL_RANK=str(membership.local_rank), MASTER_ADDR=master.host, MASTER_PORT=str(master.port))
    dist.init_process_group(backend, init_method=f"tcp://{_url_host(master.host)}:{master.port}",
                            rank=membership.rank, world_size=membership.world_size,
                            timeout=timedelta(seconds=REJOIN_TIMEOUT_S))


def this_node() -> str:
    """Ray's id of the node this process runs on (hex, as `bertctl spot nodes` shows it)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def leave_group() -> None:
    """Destroy this process's process group. DeepSpeed caches a clone of the world group
    (``deepspeed.utils.groups._WORLD_GROUP``): left in place it points at the destroyed group."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    try:
        import deepspeed.utils.groups as groups
    except ImportError:
        return
    groups._WORLD_GROUP = None


class NodeDrainWatch:
    """Whether this process's node is being drained (a preemption notice), read from Ray's GCS
    every ``period_s`` by a daemon thread: the step itself only reads the last answer. Called, it
    returns the drain's deadline (unix s; inf when Ray has none) or None: a ``PreemptionWatcher``
    probe."""

    def __init__(self, period_s: float = DRAIN_POLL_S) -> None:
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self.period_s = period_s
        self._deadline: float | None = None
        self._stop = threading.Event()
        self._warned = False
        self._look()  # a group that starts on a node already under notice knows before its first step
        self._thread = threading.Thread(target=self._run, name="node-drain-watch", daemon=True)
        self._thread.start()

    def __call__(self) -> float | None:
        return self._deadline

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._look()

    def _look(self) -> None:
        import ray

        try:
            deadline_ms = ray._private.state.state.get_draining_nodes().get(self.node)
        except Exception as exc:  # noqa: BLE001 - a GCS hiccup: the next look asks again
            if not self._warned:
                log.warning("cannot read the draining nodes (asking again every %.0f s): %s", self.period_s, exc)
                self._warned = True
            return
        if deadline_ms is not None and self._deadline is None:
            self._deadline = deadline_ms / 1000.0 if deadline_ms else float("inf")


def relay_rows(relay_name: str, rows: list[dict], rank: int, world_size: int) -> None:
    """Collective: rank 0 gathers every rank's buffered rows and hands them to the attempt's metrics
    relay on the driver's node, which writes them as Ray Train's report would have."""
    import ray
    import torch.distributed as dist

    per_rank: list | None = [None] * world_size if rank == 0 else None
    dist.gather_object(rows, per_rank, dst=0)
    if rank == 0 and any(per_rank):
        ray.get(ray.get_actor(relay_name).append.remote(per_rank), timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
