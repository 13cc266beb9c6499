"""The worker's side of an elastic attempt (driver/elastic.py has the controller's side).

* A node of the group under notice: every rank checkpoints this step (the loop's preemption path)
  and raises ``NodePreempted``; Ray Train re-forms the group on the survivors, which resume from
  that checkpoint: no step is lost.
* Room for more workers: at a checkpoint boundary rank 0 looks at the cluster; when it holds at
  least one more worker (up to max) and growing now pays for the pause (the journal judges it from
  the attempt's loss rate and re-form cost), every rank raises ``GrowRequested`` once that
  checkpoint has committed, and the group re-forms larger from it. When growing does not pay, the
  capacity waits for the next loss's re-form, which takes it in.
* The first step of a re-formed group: rank 0 completes the resize's record in the journal and
  reports every record of the attempt with its heartbeats (contract.Resize).
* A node of the group under notice, and the checkpoint inside the notice committed: when the
  survivors keep the global batch and are at least min, they re-form in place instead
  (worker/regroup.py): no process ends or starts, and the ranks on the noticed node leave.
* A node of a group that has not stepped yet comes under notice (it was counted before its notice,
  while the group was being formed): the group ends at once, before loading or after it, and
  re-forms without it; the pause of the record in progress goes on (``leave_if_noticed``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from typing import Any

from orchestrator.contract import Resize
from orchestrator.spec_rules import usable_worker_count, valid_worker_counts
from orchestrator.train.worker import regroup
from orchestrator.train.worker.errors import NodePreempted, PreemptedError
from orchestrator.train.worker.preemption import PreemptionWatcher, StopRequest, max_over_ranks

log = logging.getLogger("bertctl.train.elastic")
STEP_WINDOW = 100  # the steps a group's speed is judged on (the latest)
MIN_STEPS_MEASURED = 10  # fewer say too little to weigh a pause on


def elastic_side(config: dict[str, Any], job, rank: int, world_size: int) -> "ElasticSide | None":
    """This rank's elastic side when the driver made the attempt elastic (driver/launch.py), else None."""
    if not config.get("elastic"):
        return None
    r = job.spec.resources
    per_worker = {"CPU": float(r.cpus_per_worker), **({"GPU": float(r.gpus_per_worker)} if r.gpus_per_worker else {})}
    batch = (job.spec.training.global_batch_size, job.spec.training.micro_batch_size)
    return ElasticSide(config["resize_journal"], rank, world_size, r.workers.max, per_worker, batch)


class ElasticSide:
    """One rank's view; ``None`` of it is used by a fixed-size attempt."""

    def __init__(self, journal_name: str, rank: int, world_size: int, max_workers: int, worker_resources: dict,
                 batch: tuple[int, int]):
        import ray

        self.rank, self.world_size, self.max_workers = rank, world_size, max_workers
        self.global_batch, self.micro_batch = batch
        self.worker_resources = worker_resources
        self.journal = ray.get_actor(journal_name) if rank == 0 else None
        self.started_at = time.time()
        self.loaded_at: float | None = None
        self.resizes: list[Resize] = []
        self._declined = False  # the last look found room but judged a grow not worth its pause
        self.step_times: deque[float] = deque(maxlen=STEP_WINDOW)  # rank 0: this group's recent steps
        self._steps = 0

    def loaded(self) -> None:
        self.loaded_at = time.time()

    def formed(self, resumed_from_step: int, first_step_at: float) -> None:
        """After the group's first step (rank 0): the journal completes the record of how it came to be."""
        if self.journal is None:
            return
        import ray

        records = ray.get(self.journal.formed.remote(self.world_size, resumed_from_step, self.started_at,
                                                     self.loaded_at or self.started_at, first_step_at))
        self.resizes = [Resize(**r) for r in records]
        if self.resizes:
            log.info("worker group of %d re-formed: %s", self.world_size, self.resizes[-1].model_dump())

    def leaving(self, kind: str, step: int, last_step_at: float) -> None:
        """Rank 0, right before every rank raises to re-form: the old group's side of the record."""
        if self.journal is not None:
            self.journal.left.remote(kind, step, self.world_size, last_step_at)

    def reformed_in_place(self, step: int, from_world: int, last_step_at: float, decided_at: float,
                          departed: tuple[int, ...]) -> None:
        """The new rank 0, once the survivors formed their group: the old group's side of the record
        (its rank 0 may have left), and the Ray Train ranks that left, whose ends are no failure."""
        if self.journal is not None:
            import ray

            ray.get(self.journal.reformed_in_place.remote(step, from_world, last_step_at, decided_at,
                                                          list(departed)), timeout=30)

    def finished(self) -> None:
        """Rank 0, after the last checkpoint committed: the run is complete (the controller's
        policy then ends the attempt even while the actors of departed ranks read as failed)."""
        if self.journal is not None:
            import ray

            try:
                ray.get(self.journal.finish.remote(), timeout=30)
            except Exception as exc:  # noqa: BLE001 - the driver finds the final checkpoint either way
                log.warning("cannot tell the resize journal that the run is complete: %s", exc)

    def abandoned(self) -> None:
        """Rank 0, before every rank raises: this group ends before its first step."""
        if self.journal is not None:
            import ray

            try:
                ray.get(self.journal.abandoned.remote(), timeout=30)  # before the controller's failed()
            except Exception as exc:  # noqa: BLE001 - the journal is advisory: the group re-forms anyway
                log.warning("cannot tell the resize journal that this group ends before its first step: %s", exc)

    def stepped(self, seconds: float) -> None:
        """After every step: its time (the group's first step, which loads and warms up, is left out)."""
        self._steps += 1
        if self.journal is not None and self._steps > 1 and seconds > 0:
            self.step_times.append(seconds)

    def grow_now(self) -> bool:
        """Collective (call on every rank at the same step, at a checkpoint): rank 0 tells the journal
        its step time, sees room for more workers, and the journal judges that growing now pays for
        its pause (driver/elastic.py ``should_grow``)."""
        self._tell_step_time()
        grow = (self.rank == 0 and self.world_size < self.max_workers  # at max: no look at the cluster
                and self._grow_pays(self._room()))
        return max_over_ranks([1.0 if grow else 0.0])[0] > 0

    def _tell_step_time(self) -> None:
        """Rank 0: the median of this group's recent steps, once it has enough of them, sent before
        any question that uses it (calls from one caller reach an actor in order). A median, since
        a few slow steps (a checkpoint, a node starting beside it) say nothing of the group's speed."""
        if self.journal is not None and len(self.step_times) >= MIN_STEPS_MEASURED:
            self.journal.measured.remote(self.world_size, statistics.median(self.step_times))

    def _room(self) -> int:
        """Workers a grow would add now: up to the largest count that fits the cluster and keeps the
        global batch (a grow to a count that breaks it would re-form no larger)."""
        fits = min(self.max_workers, self.world_size + self._workers_that_fit())
        target = usable_worker_count(self.global_batch, self.micro_batch, self.world_size + 1, fits)
        return target - self.world_size if target else 0

    def _grow_pays(self, added: int) -> bool:
        if added < 1:
            return False
        import ray

        try:
            grow, why = ray.get(self.journal.should_grow.remote(self.world_size, added, time.time()), timeout=10)
        except Exception as exc:  # noqa: BLE001 - the journal is advisory: grow, as without its judgement
            log.warning("cannot ask the resize journal whether growing pays: %s", exc)
            return True
        if grow or not self._declined:  # a wait is logged when it begins, not at every checkpoint
            log.info("room for %d more worker(s): %s", added, why)
        self._declined = not grow
        return grow

    def headroom(self) -> "regroup.Headroom | None":
        """Rank 0, under a notice: the capacity the cluster holds beyond the group and the journal's
        terms for re-forming wider (None on other ranks or when it cannot say: then the survivors
        re-form in place). The plan counts what is idle once it knows who stays (regroup.Headroom)."""
        if self.journal is None:
            return None
        import ray

        try:
            self._tell_step_time()
            nodes = _usable_nodes()
            free, bundles = self._free_workers(nodes), _own_bundles_on(nodes)
            per_loss, extra, step_s = ray.get(self.journal.widen_terms.remote(time.time()), timeout=10)
        except Exception as exc:  # noqa: BLE001 - advisory: in place is always safe
            log.warning("cannot judge whether to re-form wider: %s", exc)
            return None
        return regroup.Headroom(free, bundles, per_loss, extra, step_s)

    def work_loss_mtbp_s(self) -> float | None:
        """Rank 0: this attempt's seconds per re-form that redid steps, as the journal counts them
        (None on other ranks, before such a re-form, or when the journal cannot say)."""
        if self.journal is None:
            return None
        import ray

        try:
            return ray.get(self.journal.work_loss_mtbp_s.remote(time.time()), timeout=10)
        except Exception as exc:  # noqa: BLE001 - the journal is advisory: keep the interval as it is
            log.warning("cannot ask the resize journal how often work was lost: %s", exc)
            return None

    def _workers_that_fit(self) -> int:
        """Workers that fit the free resources of live nodes not under notice, and the group's own
        placement bundles beyond its size on such nodes: after ranks left in place, Ray places
        their bundles again on returned capacity, which then shows as reserved, not free. (Only
        without a notice: a member on a noticed node would make the spare bundles look fewer.)"""
        nodes = _usable_nodes()
        return self._free_workers(nodes) + max(0, _own_bundles_on(nodes) - self.world_size)

    def _free_workers(self, nodes: set[str]) -> int:
        import ray

        free = ray._private.state.available_resources_per_node()
        return sum(_fits(res, self.worker_resources) for node, res in free.items() if node in nodes)


def _usable_nodes() -> set[str]:
    """Live nodes not under notice."""
    import ray

    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    return alive - set(ray._private.state.state.get_draining_nodes())


def leave_if_noticed(watcher: PreemptionWatcher, elastic: "ElasticSide | None", resumes_step: int) -> None:
    """Collective, before an elastic group's first step: a notice heard now ends the group at once.
    Nothing was trained since the committed checkpoint it resumes from, so there is nothing to save,
    and loading or stepping first would only lengthen the pause (docs/spot.md)."""
    if elastic is None or watcher.poll(save_cost_s=None) is StopRequest.CONTINUE:
        return
    if watcher.attempt_wide:
        raise PreemptedError(f"preempted before the first step; the next attempt resumes from step {resumes_step}")
    elastic.abandoned()
    raise NodePreempted(f"a node of the group came under notice before its first step; "
                        f"re-forming without it from step {resumes_step}")


def _own_bundles_on(nodes: set[str]) -> int:
    """Bundles of this worker's placement group (Ray Train's, one per worker) placed on ``nodes``."""
    from ray.util import get_current_placement_group, placement_group_table

    group = get_current_placement_group()
    if group is None:
        return 0
    try:
        placed = placement_group_table(group).get("bundles_to_node_id", {})
    except Exception as exc:  # noqa: BLE001 - count free resources only
        log.warning("cannot read the worker group's placement: %s", exc)
        return 0
    return sum(1 for node in placed.values() if node in nodes)


def in_place_plan(job, train_rank: int, leaving: bool, committed: bool,
                  headroom: "regroup.Headroom | None" = None) -> "regroup.InPlace | None":
    """Collective after a node's notice: the group the survivors form in place, or None when the
    group ends and Ray Train re-forms it (worker/regroup.py ``plan``)."""
    t, workers = job.spec.training, job.spec.resources.workers
    valid = valid_worker_counts(t.global_batch_size, t.micro_batch_size, range(workers.min, workers.max + 1))
    return regroup.plan(regroup.take_seats(train_rank, leaving, headroom), committed, workers.min, valid)


def _fits(free: dict[str, Any], per_worker: dict[str, float]) -> int:
    counts = [int(free.get(k, 0.0) // v) for k, v in per_worker.items() if v > 0]
    return min(counts) if counts else 0
