"""The failure policy as tables: every EndReason x {budget left, budget exhausted}; the delay before a
retry (the one a temporary error carried, else the backoff); the exit-code table it starts from."""

import pytest

from orchestrator.contract import EXIT_REASONS, EndReason, ExitCode, reason_for_exit
from orchestrator.manager.policy import PERMANENT, Action, backoff_delay, decide_attempt_end, retry_delay

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
    R.STORAGE_ERROR: (Action.FAIL, Action.FAIL),
    R.CHECKPOINT_ERROR: (Action.FAIL, Action.FAIL),
    R.CANCELLED: (Action.CANCEL, Action.CANCEL),
}
# exit code of the trainer: (end reason, never retried)
EXIT_TABLE = {
    ExitCode.SUCCEEDED: (R.SUCCEEDED, False),
    ExitCode.USER_ERROR: (R.INVALID_CONFIG, True),
    ExitCode.PREEMPTED: (R.PREEMPTED, False),
    ExitCode.DATA_ERROR: (R.DATA_ERROR, True),
    ExitCode.NAN_LOSS: (R.NAN_LOSS, True),
    ExitCode.OUT_OF_MEMORY: (R.OUT_OF_MEMORY, True),
    ExitCode.INFRASTRUCTURE: (R.INFRASTRUCTURE, False),
    ExitCode.CHECKPOINT_ERROR: (R.CHECKPOINT_ERROR, True),
    ExitCode.STORAGE_ERROR: (R.STORAGE_ERROR, True),
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


@pytest.mark.parametrize("code", list(ExitCode), ids=lambda c: c.name)
def test_exit_code_table(code):
    reason, permanent = EXIT_TABLE[code]
    assert set(EXIT_TABLE) == set(ExitCode) and EXIT_REASONS[code] is reason is reason_for_exit(int(code))
    assert (reason in PERMANENT) is permanent


# (restarts used, the delay the error carried) -> the delay before the next attempt (backoff 5 s, cap 60 s)
DELAYS = [
    (0, None, 5.0), (3, None, 40.0), (0, 20.0, 20.0), (3, 20.0, 20.0), (0, 0.0, 0.0), (0, 500.0, 60.0),
]


@pytest.mark.parametrize("used,carried,expected", DELAYS)
def test_a_temporary_error_is_retried_after_the_delay_it_carries(used, carried, expected):
    assert retry_delay(used, 5.0, 60.0, carried) == expected
    d = decide_attempt_end(R.INFRASTRUCTURE, used, 10, 5.0, 60.0, retry_after_s=carried)
    assert (d.action, d.delay_s) == (Action.RETRY, expected) and f"in {expected:g}s" in d.why


def test_a_permanent_error_fails_at_once_with_the_trainers_message():
    said = "StorageError: s3://no-such-bkt/ck/attempts/attempt-00000001: write failed: bucket 'no-such-bkt' does not exist"
    d = decide_attempt_end(R.STORAGE_ERROR, 0, 10, retry_after_s=20.0, detail=said)
    assert d.action is Action.FAIL and d.delay_s == 0.0
    assert "bucket 'no-such-bkt' does not exist" in d.why and "retrying cannot help" in d.why


def test_no_restarts_allowed_fails_a_preemption_at_once():
    assert decide_attempt_end(R.PREEMPTED, 0, 0).action is Action.FAIL


@pytest.mark.parametrize("used,expected", [(0, 5.0), (1, 10.0), (2, 20.0), (5, 160.0), (6, 300.0), (100, 300.0)])
def test_backoff_is_exponential_and_capped(used, expected):
    assert backoff_delay(used, 5.0, 300.0) == expected
