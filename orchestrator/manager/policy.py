"""What to do when an attempt ends: a pure function of why it ended and the budget left.

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
class Decision:
    action: Action
    delay_s: float = 0.0
    why: str = ""


# Capacity went away or a dependency hiccuped: the same job can succeed on the next attempt.
RETRYABLE = frozenset({EndReason.PREEMPTED, EndReason.NODE_LOST, EndReason.WORKER_LOST,
                       EndReason.HEARTBEAT_TIMEOUT, EndReason.INFRASTRUCTURE})
# The job itself is wrong: retrying repeats the failure and burns capacity.
PERMANENT = frozenset({EndReason.INVALID_CONFIG, EndReason.DATA_ERROR, EndReason.OUT_OF_MEMORY,
                       EndReason.NAN_LOSS, EndReason.IMAGE_PULL})
# Interruptions that count towards the observed mean time between preemptions.
INTERRUPTIONS = frozenset({EndReason.PREEMPTED, EndReason.NODE_LOST, EndReason.WORKER_LOST})


def backoff_delay(restarts_used: int, backoff_s: float, max_backoff_s: float) -> float:
    """Exponential: backoff_s, 2x, 4x, ... capped at max_backoff_s."""
    return min(max_backoff_s, backoff_s * (2 ** min(restarts_used, 30)))


def decide(reason: EndReason, restarts_used: int, max_restarts: int,
           backoff_s: float = 5.0, max_backoff_s: float = 300.0) -> Decision:
    if reason is EndReason.SUCCEEDED:
        return Decision(Action.SUCCEED, why="the trainer finished")
    if reason is EndReason.CANCELLED:
        return Decision(Action.CANCEL, why="cancelled by a user")
    if reason in PERMANENT:
        return Decision(Action.FAIL, why=f"{reason.value} is a problem of the job itself; fix it and resubmit")
    if restarts_used >= max_restarts:
        return Decision(Action.FAIL, why=f"{reason.value}, and the restart budget "
                                         f"(recovery.max_restarts={max_restarts}) is used up")
    delay = backoff_delay(restarts_used, backoff_s, max_backoff_s)
    return Decision(Action.RETRY, delay_s=delay,
                    why=f"{reason.value}: restart {restarts_used + 1} of {max_restarts} in {delay:g}s")


def unfenced_failure(decision: Decision, cause: Exception) -> Decision:
    """An attempt whose end could not be confirmed: never relaunch beside it (cancel stays cancel)."""
    if decision.action in (Action.CANCEL, Action.SUCCEED, Action.FAIL):
        return decision
    return Decision(Action.FAIL, why=f"the backend could not confirm the previous attempt stopped ({cause}); "
                                     "check the backend's configuration and delete leftovers by hand, then resubmit")
