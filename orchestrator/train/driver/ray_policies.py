"""bertctl's failure and scaling policies for the Ray Train controller of an elastic attempt
(the why is in driver/elastic.py). They derive from Ray Train's own policies, so this module
imports Ray Train's internals; only ``launch.build_trainer`` imports it, for an elastic attempt.
"""

from __future__ import annotations

import logging
import time

import ray
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy, NoopDecision
from ray.train.v2.api.exceptions import ControllerError, PreemptionError

from orchestrator.spec_rules import usable_worker_count
from orchestrator.train.driver.elastic import (
    CAPACITY_WAIT_S, GROW_SETTLE_S, MAX_RECOVERIES, InsufficientCapacity, capacity_lost, dead_nodes,
    draining_nodes,
)
from orchestrator.train.driver.start_guard import take_cut_short

log = logging.getLogger("bertctl.train.elastic")


class CapacityRecovery(DefaultFailurePolicy):
    """Retry (re-form the group) on lost capacity only; every other failure ends the attempt."""

    def __init__(self, failure_config, journal, keep_asking=None) -> None:
        """``keep_asking``: asks the autoscaler for max workers again (the scaling policy's request,
        which the controller makes only while no worker fails, and departed ones fail at every poll)."""
        super().__init__(failure_config)
        self.journal, self.keep_asking = journal, keep_asking
        self.recoveries = 0
        self.known_dead = dead_nodes()  # built by the driver: nodes dead before the attempt do not count
        self.departed_seen: set[int] = set()

    def make_decision(self, training_failed_error) -> FailureDecision:
        if isinstance(training_failed_error, ControllerError):
            if take_cut_short():  # a start that StartOnLiveNodes ended: capacity, whatever Ray made of it
                log.info("the worker group's start was cut short by a notice: it re-forms")
                self.journal.failed.remote(time.time(), True)  # a loss; the record of the pause goes on
                return FailureDecision.RETRY
            return super().make_decision(training_failed_error)
        departed = self._departed_only(training_failed_error)
        if departed is not None:
            return departed
        retry = isinstance(training_failed_error, PreemptionError) or capacity_lost(
            training_failed_error, self.known_dead)
        self.known_dead = dead_nodes()
        if not retry:
            log.info("attempt ends: %s", type(training_failed_error).__name__)
            return FailureDecision.RAISE
        if self.recoveries >= MAX_RECOVERIES:
            self._give_up(f"capacity was lost again after {self.recoveries} re-forms of the worker group "
                          f"in this attempt (at most {MAX_RECOVERIES}); the manager relaunches the attempt "
                          "from its newest committed checkpoint when its retry policy allows")
            return FailureDecision.RAISE
        self.recoveries += 1
        self.journal.failed.remote(time.time(), _noticed(training_failed_error))
        log.info("capacity changed: the worker group re-forms (%d so far)", self.recoveries)
        return FailureDecision.RETRY

    def _departed_only(self, error) -> FailureDecision | None:
        """Every failing worker is one that left a group re-formed in place (its node is gone):
        training goes on (NOOP), or once the run is complete the attempt ends, and the driver finds
        the final checkpoint committed (entry.finished_before). None: a real failure, decided below."""
        failing = set(getattr(error, "worker_failures", None) or ())
        if not failing:
            return None
        try:
            departed, complete = ray.get(self.journal.in_place_state.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - the journal cannot say: decide as for any failure
            log.warning("cannot ask the resize journal which workers left in place: %s", exc)
            return None
        if not failing <= set(departed):
            return None
        self.known_dead = dead_nodes()  # their nodes' deaths are no news to a later decision
        if complete:
            log.info("the run is complete; rank(s) %s left earlier, in place", sorted(failing))
            return FailureDecision.RAISE
        if self.keep_asking is not None:
            self.keep_asking()
        if failing != self.departed_seen:
            log.info("rank(s) %s left the group in place; their ends are no failure", sorted(failing))
            self.departed_seen = failing
        return FailureDecision.NOOP

    def _give_up(self, why: str) -> None:
        log.info("attempt ends: %s", why)
        try:  # awaited: the driver asks the journal once fit() has raised
            ray.get(self.journal.give_up.remote(why), timeout=10)
        except Exception as exc:  # noqa: BLE001 - the attempt ends either way; only its reason is at stake
            log.warning("cannot record why the attempt ends: %s", exc)


class CheckpointBoundaryElastic(ElasticScalingPolicy):
    """Ray's elastic sizing for a new group; a running group is never resized here (it grows at its
    next checkpoint, worker/elastic.py); below min for ``wait_s`` after a loss, the attempt ends."""

    def __init__(self, scaling_config, journal, batch: tuple[int, int], wait_s: float = CAPACITY_WAIT_S) -> None:
        super().__init__(scaling_config)
        self.journal, self.wait_s = journal, wait_s
        self.global_batch, self.micro_batch = batch
        self.formed_once = False
        self.short_since: float | None = None
        self.reforming_since: float | None = None

    def _get_reserved_resources(self):
        # Asked only while no group runs (a running group never resizes here): a fresh view, not
        # the coordinator's last periodic one (up to 20 s old: a grow would re-form as it was).
        try:
            return ray.get(self._autoscaling_coordinator.get_reserved_resources.remote(
                self._requester_id, recompute=True), timeout=10)
        except Exception as exc:  # noqa: BLE001 - no answer now: decide at the next look
            log.warning("cannot read the cluster's free resources: %s", exc)
            return None

    def _count_possible_workers(self, reserved_resources) -> int:
        # A node under notice is still alive to Ray, but nothing new is scheduled on it: counting
        # it would form a group that waits for its placement until the node is gone.
        draining = _draining_nodes()
        usable = {node: res for node, res in reserved_resources.items() if node not in draining}
        possible = super()._count_possible_workers(usable)
        # Only counts that keep the global batch form a group (spec_rules.usable_worker_count); with
        # none from min up, the count stays below min and the group waits as it would short of nodes.
        return usable_worker_count(self.global_batch, self.micro_batch, self.scaling_config.min_workers,
                                   possible) or possible

    def keep_asking(self) -> None:
        """Ask the autoscaler for max workers (rate-limited by Ray's policy)."""
        try:
            self._maybe_send_resource_request()
        except Exception as exc:  # noqa: BLE001 - the next poll asks again
            log.warning("cannot ask the autoscaler for workers: %s", exc)

    def make_decision_for_running_worker_group(self, worker_group_state, worker_group_status):
        self._maybe_send_resource_request()  # keep asking the autoscaler for max workers
        return NoopDecision()

    def make_decision_for_non_running_worker_group(self):
        decision = super().make_decision_for_non_running_worker_group()
        if isinstance(decision, NoopDecision):
            self._give_up_when_short_too_long()
            return decision
        if self._settling(decision.num_workers):
            return NoopDecision()
        self.formed_once, self.short_since, self.reforming_since = True, None, None
        return decision

    def _give_up_when_short_too_long(self) -> None:
        if not self.formed_once:
            return  # a first start waits under the manager's startup liveness
        self.short_since = self.short_since or time.monotonic()
        if time.monotonic() - self.short_since > self.wait_s:
            raise InsufficientCapacity(
                f"fewer than {self.scaling_config.min_workers} worker(s) fit the cluster for {self.wait_s:.0f} s "
                "after capacity was lost; the manager relaunches the attempt when its retry policy allows")

    def _settling(self, workers: int) -> bool:
        """A group that ended to grow comes back larger: the resources its own placement held
        show as free only once Ray's reservations catch up (a second or two), so a count no
        larger than the group that ended waits up to GROW_SETTLE_S for them rather than
        re-forming as it was (unless a loss cut the grow's start short: then no larger group is
        coming). The journal knows that group's size: it may have shrunk in place since this
        policy sized it."""
        if not self.formed_once:
            return False
        try:
            growing_from = ray.get(self.journal.growing_from.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - the journal is advisory: decide without it
            return False
        if growing_from is None or workers > growing_from:
            return False
        self.reforming_since = self.reforming_since or time.monotonic()
        return time.monotonic() - self.reforming_since <= GROW_SETTLE_S


def _noticed(error: BaseException) -> bool:
    """The capacity went with a notice: Ray Train's watcher saw the drain, or the loop saved inside it."""
    from orchestrator.train.driver.outcome import _unwrap
    from orchestrator.train.worker.errors import NodePreempted

    return isinstance(error, PreemptionError) or any(isinstance(e, NodePreempted) for e in _unwrap(error))


def _draining_nodes() -> set[str]:
    """The draining nodes, or none when Ray cannot say."""
    try:
        return draining_nodes()
    except Exception as exc:  # noqa: BLE001 - a GCS hiccup: count every live node, as Ray itself does
        log.warning("cannot read the draining nodes: %s", exc)
        return set()
