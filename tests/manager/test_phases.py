"""The job phase table: every legal move, every other (from, to) pair refused, and the store
refusing an illegal move."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.errors import PermanentError
from orchestrator.manager.models import Job
from orchestrator.manager.phases import (ACTIVE, TERMINAL, TRANSITIONS, WAITING, IllegalTransition, Phase,
                                         check_transition, is_legal)

from tests.manager.conftest import make_manifest

P = Phase
# Written out on purpose (not derived from TRANSITIONS): a change to the table must change this too.
LEGAL = {
    (P.PENDING, P.LAUNCHING), (P.PENDING, P.CANCELLED),
    (P.LAUNCHING, P.RUNNING), (P.LAUNCHING, P.RECOVERING), (P.LAUNCHING, P.SUCCEEDED),
    (P.LAUNCHING, P.FAILED), (P.LAUNCHING, P.CANCELLED),
    (P.RUNNING, P.RECOVERING), (P.RUNNING, P.SUCCEEDED), (P.RUNNING, P.FAILED), (P.RUNNING, P.CANCELLED),
    (P.RECOVERING, P.LAUNCHING), (P.RECOVERING, P.CANCELLED),
}
ALL_PAIRS = list(itertools.product(Phase, Phase))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]


def _id(pair: tuple[Phase, Phase]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_table_names_every_phase_and_nothing_else():
    assert set(TRANSITIONS) == set(Phase)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL


@pytest.mark.parametrize("pair", sorted(LEGAL), ids=_id)
def test_legal_move(pair):
    current, target = pair
    assert is_legal(current, target)
    check_transition(current, target)


@pytest.mark.parametrize("pair", ILLEGAL, ids=_id)
def test_illegal_move_is_refused(pair):
    current, target = pair
    assert not is_legal(current, target)
    with pytest.raises(IllegalTransition, match=f"{current.value} cannot move to {target.value}") as info:
        check_transition(current, target)
    assert isinstance(info.value, PermanentError) and (info.value.current, info.value.target) == pair


def test_final_phases_are_final_and_every_active_phase_can_be_cancelled():
    assert all(not TRANSITIONS[p] for p in TERMINAL)
    assert all(is_legal(p, P.CANCELLED) for p in ACTIVE)
    assert {p for p in Phase if is_legal(p, P.LAUNCHING)} == WAITING


def test_the_store_refuses_an_illegal_move_and_changes_nothing(store, tmp_path):
    job, _ = store.create_job(make_manifest(tmp_path), "local", 1.0)
    with pytest.raises(IllegalTransition, match="PENDING cannot move to RUNNING"):
        with store.tx() as s:
            store.move(s.get(Job, job["id"]), P.RUNNING, 2.0)
    after = store.get_job(job["id"])
    assert (after["phase"], after["updated_at"]) == ("PENDING", 1.0)
    store.request_cancel(job["id"], 3.0)
    with pytest.raises(IllegalTransition, match="CANCELLED cannot move to LAUNCHING"):
        with store.tx() as s:
            store.move(s.get(Job, job["id"]), P.LAUNCHING, 4.0)
    assert store.get_job(job["id"])["phase"] == "CANCELLED"


def test_the_store_moves_a_job_through_the_table(store, tmp_path):
    job, _ = store.create_job(make_manifest(tmp_path), "local", 1.0)
    with store.tx() as s:
        store.move(s.get(Job, job["id"]), P.LAUNCHING, 2.0)
    with store.tx() as s:
        store.move(s.get(Job, job["id"]), P.FAILED, 3.0, message="why")
    after = store.get_job(job["id"])
    assert (after["phase"], after["updated_at"], after["ended_at"], after["message"]) == ("FAILED", 3.0, 3.0, "why")
