"""An elastic attempt whose failure policy stops re-forming on lost capacity ends as node_lost, the
reason its end really has, not as an untyped crash; its other endings keep their own reason.
The policy and the resize journal are the real ones, the journal a real actor on a local Ray."""

from __future__ import annotations

import pytest
import ray
from ray.train import FailureConfig
from ray.train.v2._internal.execution.failure_handling import FailureDecision

from orchestrator.contract import EndReason, ExitCode
from orchestrator.train.driver import ray_policies
from orchestrator.train.driver.elastic import RecoveriesSpent, start_journal
from orchestrator.train.driver.node_loss import fit_elastic
from orchestrator.train.driver.outcome import ending_of
from orchestrator.train.driver.ray_policies import CapacityRecovery
from orchestrator.train.worker.errors import NanLossError, NodePreempted


class WorkerGroupFailure(Exception):
    """Shaped like Ray Train's WorkerGroupError: the per-rank failures by rank."""

    def __init__(self, *failures: BaseException):
        super().__init__("worker group failed")
        self.worker_failures = dict(enumerate(failures))


def _raise(error: BaseException):
    def fit():
        raise error
    return fit


def _policy_and_ending(name: str):
    journal = start_journal(name)
    return CapacityRecovery(FailureConfig(max_failures=0), journal), \
        (lambda: ray.get(journal.ended_on_capacity.remote(), timeout=10))


def test_capacity_lost_once_more_after_the_last_re_form_ends_the_attempt_as_node_lost(ray_cluster, monkeypatch):
    monkeypatch.setattr(ray_policies, "MAX_RECOVERIES", 2)
    policy, ended_on_capacity = _policy_and_ending("test-journal-spent")
    loss = WorkerGroupFailure(NodePreempted("node n3 under a preemption notice"))
    decisions = [policy.make_decision(loss) for _ in range(3)]
    assert decisions == [FailureDecision.RETRY, FailureDecision.RETRY, FailureDecision.RAISE]
    with pytest.raises(RecoveriesSpent) as ended:
        fit_elastic(_raise(loss), ended_on_capacity)
    assert ending_of(ended.value)[:2] == (ExitCode.INFRASTRUCTURE, EndReason.NODE_LOST)
    assert "after 2 re-forms" in str(ended.value) and "relaunches" in str(ended.value)


def test_a_runs_own_fault_in_an_elastic_attempt_keeps_its_reason(ray_cluster):
    policy, ended_on_capacity = _policy_and_ending("test-journal-nan")
    nan = WorkerGroupFailure(NanLossError("loss is nan at step 12"))
    assert policy.make_decision(nan) == FailureDecision.RAISE
    with pytest.raises(WorkerGroupFailure) as ended:
        fit_elastic(_raise(nan), ended_on_capacity)
    assert ending_of(ended.value)[:2] == (ExitCode.NAN_LOSS, EndReason.NAN_LOSS)
