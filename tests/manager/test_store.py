"""The store on SQLite and PostgreSQL: idempotent submit, transitions with events, fencing."""

import pytest

from orchestrator.contract import CheckpointRef, EndReason, Heartbeat
from orchestrator.manager.auth import hash_token
from orchestrator.manager.heartbeats import Outcome, apply_heartbeat
from orchestrator.manager.policy import Action, AttemptEndDecision
from orchestrator.manager.store import ConflictError, Store

from tests.manager.conftest import make_manifest


def _submit(store, tmp_path, sid=None, **kw):
    return store.create_job(make_manifest(tmp_path, **kw), "local", 100.0, sid)


def test_migrate_twice_is_a_no_op(store):
    store.migrate()
    assert store.list_jobs() == []


def test_same_submission_id_creates_one_job(store, tmp_path):
    m = make_manifest(tmp_path)
    job, created = store.create_job(m, "local", 1.0, "sub-1")
    again, created2 = store.create_job(m, "local", 2.0, "sub-1")
    assert created and not created2 and again["id"] == job["id"]
    assert len(store.list_jobs()) == 1
    with pytest.raises(ConflictError, match="different manifest"):
        store.create_job(make_manifest(tmp_path, max_steps=7), "local", 3.0, "sub-1")
    other, created3 = store.create_job(m, "local", 4.0, None)
    assert created3 and other["id"] != job["id"]


def test_list_filters(store, tmp_path):
    a, _ = _submit(store, tmp_path, name="alpha")
    _submit(store, tmp_path, name="beta")
    store.request_cancel(a["id"], 101.0)
    assert [j["name"] for j in store.list_jobs(phase="CANCELLED")] == ["alpha"]
    assert [j["name"] for j in store.list_jobs(name="beta")] == ["beta"]
    assert len(store.list_jobs(limit=1)) == 1


def _start(store, job_id, number, now=100.0, token="tok"):
    assert store.start_attempt(job_id, number, hash_token(f"{token}{number}"), now)
    store.record_launch(job_id, number, f"{1000 + number}", "/tmp/log", now)


def test_attempt_lifecycle_each_change_has_its_event(store, tmp_path):
    job, _ = _submit(store, tmp_path)
    jid = job["id"]
    _start(store, jid, 1)
    assert not store.start_attempt(jid, 1, hash_token("again"), 100.5), "a second attempt 1 must be refused"
    assert store.get_job(jid)["phase"] == "LAUNCHING"
    hb = Heartbeat(attempt=1, step=5, loss=2.0, tokens_per_s=10.0, resumed_from_step=0,
                   checkpoint=CheckpointRef(step=5, uri="file:///c/5", world_size=1), checkpoint_seconds=0.5)
    assert apply_heartbeat(store, jid, hb, 101.0) is Outcome.OK
    assert apply_heartbeat(store, jid, hb.model_copy(update={"step": 7}), 102.0) is Outcome.OK
    assert store.get_job(jid)["phase"] == "RUNNING" and store.get_job(jid)["step"] == 7
    phase = store.end_attempt(jid, 1, EndReason.WORKER_LOST, AttemptEndDecision(Action.RETRY, 0.0, "lost"), 103.0, -9)
    assert phase == "RECOVERING"
    att = store.attempts(jid)[0]
    assert att["state"] == "ended" and att["steps_lost"] == 2 and att["end_reason"] == "worker_lost"
    assert store.lookup_token(hash_token("tok1"))["revoked"]
    # the ended attempt is fenced off even though its token still resolves
    assert apply_heartbeat(store, jid, hb.model_copy(update={"step": 8}), 103.5) is Outcome.STALE
    _start(store, jid, 2, now=104.0)
    assert apply_heartbeat(store, jid, hb, 104.5) is Outcome.STALE, "attempt 1 is not current any more"
    hb2 = Heartbeat(attempt=2, step=6, resumed_from_step=5)
    assert apply_heartbeat(store, jid, hb2, 106.0) is Outcome.OK
    assert store.attempts(jid)[1]["recovery_s"] == pytest.approx(3.0)
    assert store.end_attempt(jid, 2, EndReason.SUCCEEDED, AttemptEndDecision(Action.SUCCEED), 107.0, 0) == "SUCCEEDED"
    assert store.end_attempt(jid, 2, EndReason.SUCCEEDED, AttemptEndDecision(Action.SUCCEED), 108.0, 0) is None
    types = [e["type"] for e in store.events(jid)]
    assert types == ["submitted", "launching", "launched", "checkpoint", "running", "attempt_ended",
                     "recovering", "launching", "launched", "running", "attempt_ended", "succeeded"]
    assert len(store.checkpoints(jid)) == 1
    assert store.mtbp_s(jid, 110.0) == pytest.approx(3.0 + 3.0)


def test_mtbp_counts_only_the_interruptions_that_lost_work(store, tmp_path):
    """A preemption that checkpointed inside its notice, and an elastic shrink that resumed from that
    checkpoint, lost no step: they do not shorten the `auto` checkpoint interval. A re-form that
    redid steps does."""
    jid = _submit(store, tmp_path)[0]["id"]
    _start(store, jid, 1, now=100.0)
    hb = Heartbeat(attempt=1, step=5, resumed_from_step=0, checkpoint=CheckpointRef(step=5, uri="file:///c/5", world_size=1))
    assert apply_heartbeat(store, jid, hb, 101.0) is Outcome.OK
    store.end_attempt(jid, 1, EndReason.PREEMPTED, AttemptEndDecision(Action.RETRY, 0.0, "notice"), 110.0, 75)
    assert store.attempts(jid)[0]["steps_lost"] == 0
    assert store.mtbp_s(jid, 110.0) is None, "nothing was lost yet: the prior applies"
    _start(store, jid, 2, now=111.0)
    with store.tx() as s:
        store.event(s, jid, "resized", "shrink notice", 115.0, attempt=2, kind="shrink_notice", steps_lost=0)
    assert store.mtbp_s(jid, 121.0) is None
    with store.tx() as s:
        store.event(s, jid, "resized", "shrink lost", 118.0, attempt=2, kind="shrink_lost", steps_lost=3)
    assert store.mtbp_s(jid, 121.0) == pytest.approx((110.0 - 100.0) + (121.0 - 111.0))


def test_a_job_s_goodput_counts_every_resize_past_the_first_page_of_events(store, tmp_path):
    """The goodput view sums the pauses of all 'resized' events, not only the first page (1000)
    that the event listing returns."""
    from orchestrator.manager.views import job_detail
    jid = _submit(store, tmp_path)[0]["id"]
    _start(store, jid, 1, now=100.0)
    with store.tx() as s:
        for i in range(1005):
            store.event(s, jid, "resized", "grow", 101.0 + i, attempt=1, kind="grow", pause_s=0.5, steps_lost=0)
    assert len(store.events(jid, type_="resized")) == 1000
    goodput = job_detail(store, store.get_job(jid), now=2000.0)["goodput"]
    assert goodput["resizes"] == 1005
    assert goodput["resize_s"] == pytest.approx(1005 * 0.5)


def test_a_commit_newer_than_the_last_heartbeat_settles_the_previous_attempt(store, tmp_path):
    """Attempt 1 committed step 6 after its last heartbeat (step 5) reached the manager; attempt 2
    resumes from 6. Attempt 1 did reach step 6, and lost nothing."""
    job, _ = _submit(store, tmp_path)
    jid = job["id"]
    _start(store, jid, 1)
    assert apply_heartbeat(store, jid, Heartbeat(attempt=1, step=5, resumed_from_step=0), 101.0) is Outcome.OK
    store.end_attempt(jid, 1, EndReason.WORKER_LOST, AttemptEndDecision(Action.RETRY, 0.0, "lost"), 102.0, -9)
    _start(store, jid, 2, now=103.0)
    assert apply_heartbeat(store, jid, Heartbeat(attempt=2, step=7, resumed_from_step=6), 104.0) is Outcome.OK
    a1 = store.attempts(jid)[0]
    assert (a1["last_step"], a1["steps_lost"]) == (6, 0)


def test_cancel_in_each_phase(store, tmp_path):
    pending, _ = _submit(store, tmp_path, name="p")
    assert store.request_cancel(pending["id"], 101.0) == "CANCELLED"
    running, _ = _submit(store, tmp_path, name="r")
    _start(store, running["id"], 1)
    assert store.request_cancel(running["id"], 101.0) == "LAUNCHING"
    assert store.get_job(running["id"])["cancel_requested"]
    # a failure that races with the cancel must not relaunch
    phase = store.end_attempt(running["id"], 1, EndReason.PREEMPTED, AttemptEndDecision(Action.RETRY, 1.0), 102.0)
    assert phase == "CANCELLED"
    assert not store.start_attempt(running["id"], 2, hash_token("x"), 103.0)
    assert store.request_cancel(running["id"], 104.0) == "CANCELLED"


def test_heartbeat_for_unknown_job(store):
    assert apply_heartbeat(store, "nope", Heartbeat(attempt=1), 1.0) is Outcome.UNKNOWN_JOB


def test_final_report_is_recorded_once(store, tmp_path):
    job, _ = _submit(store, tmp_path)
    _start(store, job["id"], 1)
    apply_heartbeat(store, job["id"], Heartbeat(attempt=1, status="failed", reason=EndReason.NAN_LOSS,
                                                message="loss is nan at step 3", step=3), 101.0)
    att = store.attempts(job["id"])[0]
    assert (att["final_status"], att["final_reason"]) == ("failed", "nan_loss")
    assert "loss is nan" in store.events(job["id"])[-1]["message"]


def test_store_survives_reopen(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    s = Store(url)
    s.migrate()
    job, _ = s.create_job(make_manifest(tmp_path), "local", 1.0, "k")
    s.close()
    s2 = Store(url)
    s2.migrate()
    assert s2.get_job(job["id"])["submission_id"] == "k"
    assert len(s2.events(job["id"])) == 1
    s2.close()


def test_migration_0002_adds_startup_phase_and_keeps_every_attempt(store, tmp_path):
    """Down to 0001 and up again on a database with an attempt: the rows survive, the column returns."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from orchestrator.manager import db

    job, _ = _submit(store, tmp_path)
    assert store.start_attempt(job["id"], 1, hash_token("t-1"), 101.0)
    cfg = Config()
    cfg.set_main_option("script_location", db._MIGRATIONS)
    with store.engine.begin() as conn:
        cfg.attributes["connection"], cfg.attributes["schema"] = conn, store.schema
        command.downgrade(cfg, "0001")
    columns = {c["name"] for c in inspect(store.engine).get_columns("attempts", schema=store.schema)}
    assert "startup_phase" not in columns and "heartbeats" in columns
    store.migrate()
    (att,) = store.attempts(job["id"])
    assert att["number"] == 1 and att["startup_phase"] is None and att["created_at"] == 101.0
