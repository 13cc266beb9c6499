"""What the job does when one of its attempts ends: a pure function of why it ended, the restart
budget left and what the trainer said last (``decide_attempt_end`` -> ``AttemptEndDecision``). The
store applies the decision as a phase move (store.Store.end_attempt; phases.TRANSITIONS).

The error taxonomy decides (errors.py): a permanent error (bad config or data, no such bucket,
access denied, an unwritable checkpoint URI) fails the job on its first occurrence, with the
trainer's own message naming the resource and the fix; a temporary one is retried after the
delay it carried (``retry_after_s``, capped at ``max_backoff_s``), or after the exponential
backoff when it carried none.

Tested as tables (every EndReason x budget left / exhausted; delays) in tests/manager/test_policy*.py.
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
                       EndReason.NAN_LOSS, EndReason.IMAGE_PULL, EndReason.STORAGE_ERROR,
                       EndReason.CHECKPOINT_ERROR})
# Interruptions that count towards the observed mean time between preemptions.
INTERRUPTIONS = frozenset({EndReason.PREEMPTED, EndReason.NODE_LOST, EndReason.WORKER_LOST})


def backoff_delay(restarts_used: int, backoff_s: float, max_backoff_s: float) -> float:
    """Exponential: backoff_s, 2x, 4x, ... capped at max_backoff_s."""
    return min(max_backoff_s, backoff_s * (2 ** min(restarts_used, 30)))


def retry_delay(restarts_used: int, backoff_s: float, max_backoff_s: float,
                retry_after_s: float | None = None) -> float:
    """The delay a temporary error carried (at most max_backoff_s), else the exponential backoff."""
    if retry_after_s is not None and retry_after_s >= 0:
        return min(max_backoff_s, retry_after_s)
    return backoff_delay(restarts_used, backoff_s, max_backoff_s)


def decide_attempt_end(reason: EndReason, restarts_used: int, max_restarts: int,
                       backoff_s: float = 5.0, max_backoff_s: float = 300.0, *,
                       retry_after_s: float | None = None, detail: str = "") -> AttemptEndDecision:
    """Succeed, cancel, fail a permanent error or an exhausted budget, else retry after a delay.
    ``retry_after_s`` and ``detail`` are the trainer's final word: the delay its temporary error
    asked for, and its message (which names the resource and the fix)."""
    if reason is EndReason.SUCCEEDED:
        return AttemptEndDecision(Action.SUCCEED, why="the trainer finished")
    if reason is EndReason.CANCELLED:
        return AttemptEndDecision(Action.CANCEL, why="cancelled by a user")
    said = f" ({detail.strip()[:1000]})" if detail.strip() else ""
    if reason in PERMANENT:
        return AttemptEndDecision(Action.FAIL, why=f"{reason.value}{said} is a problem of the job itself and "
                                                   "retrying cannot help; fix it and resubmit")
    if restarts_used >= max_restarts:
        return AttemptEndDecision(Action.FAIL, why=f"{reason.value}{said}, and the restart budget "
                                                   f"(recovery.max_restarts={max_restarts}) is used up")
    delay = retry_delay(restarts_used, backoff_s, max_backoff_s, retry_after_s)
    return AttemptEndDecision(Action.RETRY, delay_s=delay,
                              why=f"{reason.value}: restart {restarts_used + 1} of {max_restarts} in {delay:g}s")


def unfenced_failure(decision: AttemptEndDecision, cause: Exception) -> AttemptEndDecision:
    """An attempt whose end could not be confirmed: never relaunch beside it (cancel stays cancel)."""
    if decision.action in (Action.CANCEL, Action.SUCCEED, Action.FAIL):
        return decision
    return AttemptEndDecision(Action.FAIL,
                              why=f"the backend could not confirm the previous attempt stopped ({cause}); "
                                  "check the backend's configuration and delete leftovers by hand, then resubmit")
