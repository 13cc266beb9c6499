"""What the job does when one of its attempts ends: a pure function of why it ended and the
restart budget left (``decide_attempt_end`` -> ``AttemptEndDecision``). The store applies the
decision as a phase move (store.Store.end_attempt; phases.TRANSITIONS).

Tested as a table (every EndReason x budget left / exhausted) in tests/manager/test_policy.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from orchestrator.contract import EndReason


class Action(str, enum.Enum):
    SUCCEED = "succeed"
    RETRY = "retry"
    FAIL = "fail"
    CANCEL = "cancel"


@dataclass(frozen=True)
class AttemptEndDecision:
    """What the job does now that an attempt ended: the action, how long to wait before the
    next attempt (RETRY only), and why (recorded as the job's message and event)."""

    action: Action
    delay_s: float = 0.0
    why: str = ""


# The job itself is wrong: retrying repeats the failure and burns capacity. Every other reason
# but success and cancel (capacity went away, a dependency hiccuped) is retried while the restart
# budget lasts: the same job can succeed on the next attempt.
PERMANENT = frozenset({EndReason.INVALID_CONFIG, EndReason.DATA_ERROR, EndReason.OUT_OF_MEMORY,
                       EndReason.NAN_LOSS, EndReason.IMAGE_PULL})
# Interruptions that count towards the observed mean time between preemptions.
INTERRUPTIONS = frozenset({EndReason.PREEMPTED, EndReason.NODE_LOST, EndReason.WORKER_LOST})


def backoff_delay(restarts_used: int, backoff_s: float, max_backoff_s: float) -> float:
    """Exponential: backoff_s, 2x, 4x, ... capped at max_backoff_s."""
    return min(max_backoff_s, backoff_s * (2 ** min(restarts_used, 30)))


def decide_attempt_end(reason: EndReason, restarts_used: int, max_restarts: int,
                       backoff_s: float = 5.0, max_backoff_s: float = 300.0) -> AttemptEndDecision:
    """Succeed, cancel, fail a permanent error or an exhausted budget, else retry after backoff."""
    if reason is EndReason.SUCCEEDED:
        return AttemptEndDecision(Action.SUCCEED, why="the trainer finished")
    if reason is EndReason.CANCELLED:
        return AttemptEndDecision(Action.CANCEL, why="cancelled by a user")
    if reason in PERMANENT:
        return AttemptEndDecision(Action.FAIL,
                                  why=f"{reason.value} is a problem of the job itself; fix it and resubmit")
    if restarts_used >= max_restarts:
        return AttemptEndDecision(Action.FAIL, why=f"{reason.value}, and the restart budget "
                                                   f"(recovery.max_restarts={max_restarts}) is used up")
    delay = backoff_delay(restarts_used, backoff_s, max_backoff_s)
    return AttemptEndDecision(Action.RETRY, delay_s=delay,
                              why=f"{reason.value}: restart {restarts_used + 1} of {max_restarts} in {delay:g}s")


def unfenced_failure(decision: AttemptEndDecision, cause: Exception) -> AttemptEndDecision:
    """An attempt whose end could not be confirmed: never relaunch beside it (cancel stays cancel)."""
    if decision.action in (Action.CANCEL, Action.SUCCEED, Action.FAIL):
        return decision
    return AttemptEndDecision(Action.FAIL,
                              why=f"the backend could not confirm the previous attempt stopped ({cause}); "
                                  "check the backend's configuration and delete leftovers by hand, then resubmit")
