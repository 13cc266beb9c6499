"""The controller's side of a group re-formed in place (worker/regroup.py): the workers that left
fail at every poll once their node is gone, and that is no failure of the run; a survivor's failure
still is, and the end of a complete run ends the attempt. The policy and the resize journal are the
real ones, the journal a real actor on a local Ray."""

from __future__ import annotations

import time

import ray
from ray.train import FailureConfig
from ray.train.v2._internal.execution.failure_handling import FailureDecision

from orchestrator.train.driver.elastic import start_journal
from orchestrator.train.driver.ray_policies import CapacityRecovery
from orchestrator.train.worker.errors import GrowRequested, NanLossError


class WorkerGroupFailure(Exception):
    """Shaped like Ray Train's WorkerGroupError: the per-rank failures by rank."""

    def __init__(self, failures: dict[int, BaseException]):
        super().__init__("worker group failed")
        self.worker_failures = failures


def _in_place_group(name: str):
    """A group of 3 whose rank 1 left in place at step 6, and whose group of 2 then stepped."""
    journal = start_journal(name)
    now = time.time()
    ray.get(journal.formed.remote(3, 0, now - 9.0, now - 8.0, now - 7.0))  # the attempt's first group
    ray.get(journal.reformed_in_place.remote(6, 3, now - 2.0, now - 1.5, [1]))
    records = ray.get(journal.formed.remote(2, 6, now - 1.0, now - 0.5, now))
    return CapacityRecovery(FailureConfig(max_failures=0), journal), journal, records


def test_the_workers_that_left_in_place_are_no_failure(ray_cluster):
    policy, _, records = _in_place_group("test-journal-in-place")
    gone = WorkerGroupFailure({1: RuntimeError("The actor died because its node was drained")})
    assert [policy.make_decision(gone) for _ in range(3)] == [FailureDecision.NOOP] * 3
    (record,) = records
    assert (record["kind"], record["from_world"], record["to_world"]) == ("shrink_notice", 3, 2)
    assert record["last_step"] == record["resumed_from_step"] == 6
    assert record["detect_s"] == 0.5 and record["reform_s"] == 0.5 and record["pause_s"] == 2.0


def test_a_survivors_failure_is_decided_as_before(ray_cluster):
    policy, _, _ = _in_place_group("test-journal-in-place-survivor")
    nan = WorkerGroupFailure({0: NanLossError("loss is nan at step 9"), 1: RuntimeError("actor died")})
    assert policy.make_decision(nan) == FailureDecision.RAISE
    grow = WorkerGroupFailure({0: GrowRequested("room for more"), 1: RuntimeError("actor died"),
                               2: GrowRequested("room for more")})
    assert policy.make_decision(grow) == FailureDecision.RETRY


def test_a_complete_run_ends_the_attempt_though_departed_workers_read_as_failed(ray_cluster):
    policy, journal, _ = _in_place_group("test-journal-in-place-done")
    gone = WorkerGroupFailure({1: RuntimeError("actor died")})
    assert policy.make_decision(gone) == FailureDecision.NOOP
    ray.get(journal.finish.remote())
    assert policy.make_decision(gone) == FailureDecision.RAISE
