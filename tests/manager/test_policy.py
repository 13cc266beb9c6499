"""The failure policy as a table: every EndReason x {budget left, budget exhausted}."""

import pytest

from orchestrator.contract import EndReason
from orchestrator.manager.policy import Action, backoff_delay, decide_attempt_end

R = EndReason
# reason: (action with budget left, action with budget exhausted)
TABLE = {
    R.SUCCEEDED: (Action.SUCCEED, Action.SUCCEED),
    R.PREEMPTED: (Action.RETRY, Action.FAIL),
    R.NODE_LOST: (Action.RETRY, Action.FAIL),
    R.WORKER_LOST: (Action.RETRY, Action.FAIL),
    R.HEARTBEAT_TIMEOUT: (Action.RETRY, Action.FAIL),
    R.INFRASTRUCTURE: (Action.RETRY, Action.FAIL),
    R.INVALID_CONFIG: (Action.FAIL, Action.FAIL),
    R.DATA_ERROR: (Action.FAIL, Action.FAIL),
    R.OUT_OF_MEMORY: (Action.FAIL, Action.FAIL),
    R.NAN_LOSS: (Action.FAIL, Action.FAIL),
    R.IMAGE_PULL: (Action.FAIL, Action.FAIL),
    R.CANCELLED: (Action.CANCEL, Action.CANCEL),
}


def test_table_covers_every_reason():
    assert set(TABLE) == set(EndReason)


@pytest.mark.parametrize("reason", list(EndReason), ids=lambda r: r.value)
@pytest.mark.parametrize("budget", ["left", "exhausted"])
def test_decision(reason, budget):
    used = 1 if budget == "left" else 3
    d = decide_attempt_end(reason, restarts_used=used, max_restarts=3, backoff_s=2.0, max_backoff_s=60.0)
    assert d.action is TABLE[reason][0 if budget == "left" else 1]
    assert d.why
    if d.action is Action.RETRY:
        assert d.delay_s == 4.0  # 2 s doubled once for the one restart already used
    else:
        assert d.delay_s == 0.0
    if budget == "exhausted" and reason in (R.PREEMPTED, R.WORKER_LOST):
        assert "max_restarts=3" in d.why


def test_no_restarts_allowed_fails_a_preemption_at_once():
    assert decide_attempt_end(R.PREEMPTED, 0, 0).action is Action.FAIL


@pytest.mark.parametrize("used,expected", [(0, 5.0), (1, 10.0), (2, 20.0), (5, 160.0), (6, 300.0), (100, 300.0)])
def test_backoff_is_exponential_and_capped(used, expected):
    assert backoff_delay(used, 5.0, 300.0) == expected
