"""A job's phases and the one table of legal moves between them.

The store moves a job only through ``Store.move`` (store.py), which asks ``check_transition``;
tests/manager/test_phases.py checks the table and that every other (from, to) pair is refused.

Three state names describe one attempt from three sides; they line up like this:

====================  ===========================================  ==============================
job ``Phase``         current attempt's ``AttemptState`` (models)  backend's ``RunState`` (poll)
====================  ===========================================  ==============================
PENDING               none yet                                     --
LAUNCHING             LAUNCHING (row and token exist, no handle)   -- (``launch`` not returned)
LAUNCHING             RUNNING (the backend returned a handle)      STARTING or RUNNING
RUNNING               RUNNING (its first heartbeat arrived)        RUNNING
RECOVERING            ENDED (fenced; the next one is due later)    EXITED or GONE
SUCCEEDED/FAILED/     ENDED                                        EXITED or GONE
CANCELLED
====================  ===========================================  ==============================

So a job is RUNNING only once the trainer itself reported; an attempt is RUNNING as soon as the
backend holds a handle for it; a backend's RUNNING says only that something of it is alive.
An attempt is recorded ENDED only after the backend confirmed nothing of it runs (fencing).
"""

from __future__ import annotations

import enum
from types import MappingProxyType

from orchestrator.errors import PermanentError


class Phase(str, enum.Enum):
    PENDING = "PENDING"
    LAUNCHING = "LAUNCHING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})
ACTIVE = frozenset(set(Phase) - TERMINAL)
# No attempt of the job is live: it waits for its next launch (a cancel ends it at once).
WAITING = frozenset({Phase.PENDING, Phase.RECOVERING})

_ENDINGS = frozenset({Phase.RECOVERING, Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})

# from -> every phase it may move to. Who makes each move:
#   PENDING/RECOVERING -> LAUNCHING   Store.start_attempt (the supervisor launches attempt N+1)
#   LAUNCHING -> RUNNING              the attempt's first heartbeat (heartbeats.apply_heartbeat)
#   LAUNCHING/RUNNING -> an ending    Store.end_attempt, as the policy decided (a trainer may end
#                                     before its first heartbeat, so LAUNCHING may end any way)
#   any active phase -> CANCELLED     Store.request_cancel / Store.finish_cancel
# A terminal phase is final: nothing leaves it.
TRANSITIONS: MappingProxyType[Phase, frozenset[Phase]] = MappingProxyType({
    Phase.PENDING: frozenset({Phase.LAUNCHING, Phase.CANCELLED}),
    Phase.LAUNCHING: frozenset({Phase.RUNNING}) | _ENDINGS,
    Phase.RUNNING: _ENDINGS,
    Phase.RECOVERING: frozenset({Phase.LAUNCHING, Phase.CANCELLED}),
    Phase.SUCCEEDED: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.CANCELLED: frozenset(),
})


class IllegalTransition(PermanentError):
    """A job was asked to move between two phases the table does not connect (a bug, not input)."""

    def __init__(self, current: Phase, target: Phase):
        allowed = sorted(p.value for p in TRANSITIONS[current]) or ["nothing: it is final"]
        super().__init__(f"a job in phase {current.value} cannot move to {target.value}; "
                         f"from {current.value} it may move to {', '.join(allowed)}")
        self.current, self.target = current, target


def is_legal(current: Phase, target: Phase) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: Phase, target: Phase) -> None:
    """Raise IllegalTransition unless the table allows current -> target."""
    if not is_legal(current, target):
        raise IllegalTransition(current, target)
