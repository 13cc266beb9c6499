"""Apply one trainer heartbeat: fencing first, then progress, checkpoints and the final word.

The hot path of the manager (bench/manager.py measures it): one transaction, the job row
locked so a heartbeat and a supervisor decision about the same attempt never interleave.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.contract import EndReason, Heartbeat
from orchestrator.manager.models import Attempt, AttemptState, Checkpoint, Event, Job
from orchestrator.manager.evaluations import enqueue_due
from orchestrator.manager.metric_history import record_point
from orchestrator.manager.phases import TERMINAL, Phase
from orchestrator.manager.store import Store

_FINAL_REASONS = {"succeeded": EndReason.SUCCEEDED, "preempted": EndReason.PREEMPTED,
                  "failed": EndReason.INFRASTRUCTURE}


class Outcome(str, enum.Enum):
    OK = "ok"
    UNKNOWN_JOB = "unknown_job"
    STALE = "stale"          # not the job's current, live attempt: fenced off (HTTP 409)


def apply_heartbeat(store: Store, job_id: str, hb: Heartbeat, now: float) -> Outcome:
    with store.tx(durable=False) as s:
        # One round trip for both rows; only the job row is locked (the supervisor locks it too).
        found = s.execute(select(Job, Attempt).outerjoin(Attempt, (Attempt.job_id == Job.id)
                                                         & (Attempt.number == hb.attempt))
                          .where(Job.id == job_id).with_for_update(of=Job)).first()
        if found is None:
            return Outcome.UNKNOWN_JOB
        job, att = found
        if _fenced_off(job, att, hb):
            return Outcome.STALE
        if hb.status == "starting":
            _starting(store, s, job, att, hb, now)
            return Outcome.OK
        _progress(s, job, att, hb, now)
        record_point(s, job.id, att.number, hb, now)
        changed = hb.checkpoint is not None and _checkpoint(store, s, job, att, hb, now)
        changed = bool(hb.skipped_checkpoints) and _skipped(store, s, job, att, hb, now) or changed
        changed = bool(hb.resizes) and _resized(store, s, job, att, hb, now) or changed
        changed = changed or job.phase == Phase.LAUNCHING.value or hb.status != "running"
        if changed:
            # A progress-only heartbeat is superseded by the next one within seconds and need not
            # wait for the WAL flush; state changes (checkpoints, phases, final words) do.
            store.make_durable(s)
        if job.phase == Phase.LAUNCHING.value:
            _first_heartbeat(store, s, job, att, hb, now)
        if hb.status != "running" and att.final_status is None:
            _final(store, s, att, hb, now)
        return Outcome.OK


def _fenced_off(job: Job, att: Attempt | None, hb: Heartbeat) -> bool:
    """Not the job's current, live attempt: its heartbeat must change nothing."""
    if hb.attempt != job.current_attempt or Phase(job.phase) in TERMINAL:
        return True
    return att is None or att.state == AttemptState.ENDED.value


def _starting(store: Store, s: Session, job: Job, att: Attempt, hb: Heartbeat, now: float) -> None:
    """Liveness before the first training step: the phase is recorded (one event per change),
    the clock of the last word moves, and nothing else: no step, no first_step or recovery_s,
    and the job stays LAUNCHING (RUNNING means training; phases.py)."""
    att.last_heartbeat_at, att.heartbeats = now, att.heartbeats + 1
    _record_phase(store, s, job, att, hb.phase or "", now)


def record_startup_phase(store: Store, job_id: str, number: int, phase: str, now: float) -> None:
    """A startup phase the backend sees (pods Pending for capacity, an image pull failing),
    recorded as a 'starting' heartbeat's is; not liveness: the heartbeat clock stays."""
    with store.tx(durable=False) as s:
        found = s.execute(select(Job, Attempt).outerjoin(Attempt, (Attempt.job_id == Job.id)
                                                         & (Attempt.number == number))
                          .where(Job.id == job_id).with_for_update(of=Job)).first()
        if found is None:
            return
        job, att = found
        if job.current_attempt == number and Phase(job.phase) not in TERMINAL and att is not None \
                and att.state != AttemptState.ENDED.value:
            _record_phase(store, s, job, att, phase, now)


def _record_phase(store: Store, s: Session, job: Job, att: Attempt, phase: str, now: float) -> None:
    """One 'starting' event per change of phase, made durable with it."""
    phase = phase.strip()[:200] or "starting"
    if phase != att.startup_phase:
        att.startup_phase = phase
        store.make_durable(s)
        store.event(s, job.id, "starting", f"attempt {att.number}: {phase}", now, attempt=att.number, phase=phase)


def _first_heartbeat(store: Store, s: Session, job: Job, att: Attempt, hb: Heartbeat, now: float) -> None:
    """The trainer reported for the first time: the job is RUNNING (phases.TRANSITIONS)."""
    store.move(job, Phase.RUNNING, now)
    store.event(s, job.id, "running", f"attempt {att.number} is running"
                + (f", resumed from step {hb.resumed_from_step}" if hb.resumed_from_step else ""),
                now, attempt=att.number, resumed_from_step=hb.resumed_from_step)


def _metrics(hb: Heartbeat) -> dict[str, Any]:
    keys = ("step", "max_steps", "loss", "mlm_accuracy", "nsp_accuracy", "tokens_per_s", "lr",
            "tokens_seen", "world_size", "checkpoint_seconds")
    return {k: getattr(hb, k) for k in keys if getattr(hb, k) is not None}


def _progress(s: Session, job: Job, att: Attempt, hb: Heartbeat, now: float) -> None:
    att.last_heartbeat_at, att.heartbeats = now, att.heartbeats + 1
    if hb.resumed_from_step is not None and att.resumed_from_step is None:
        att.resumed_from_step = hb.resumed_from_step
        _settle_steps_lost(s, job, att)
    if att.first_step_at is None and hb.step > (att.resumed_from_step or 0):
        att.first_step, att.first_step_at = hb.step, now
        att.recovery_s = _recovery_s(s, job, att, now)
    if hb.step > att.last_step or att.last_step_at is None:
        att.last_step, att.last_step_at = max(att.last_step, hb.step), now
    if hb.checkpoint_seconds is not None:
        att.checkpoint_seconds = max(att.checkpoint_seconds, hb.checkpoint_seconds)
    metrics = _metrics(hb)
    att.metrics = metrics
    job.metrics = {**metrics, "attempt": att.number, "at": now}
    job.step, job.updated_at = hb.step, now


def _settle_steps_lost(s: Session, job: Job, att: Attempt) -> None:
    """The step this attempt resumed from is the truth about what the previous one lost: its
    newest checkpoint may have committed after its last heartbeat reached us, and then the
    previous attempt did reach that step."""
    if att.number <= 1:
        return
    prev = s.scalar(select(Attempt).where(Attempt.job_id == job.id, Attempt.number == att.number - 1))
    if prev is not None and prev.steps_lost is not None:
        prev.last_step = max(prev.last_step, att.resumed_from_step)
        prev.steps_lost = prev.last_step - att.resumed_from_step


def _recovery_s(s: Session, job: Job, att: Attempt, now: float) -> float | None:
    """Time from the previous attempt's end (the failure) to this attempt's first step."""
    if att.number <= 1:
        return None
    prev_end = s.scalar(select(Attempt.ended_at).where(Attempt.job_id == job.id, Attempt.number == att.number - 1))
    return None if prev_end is None else max(0.0, now - prev_end)


def _checkpoint(store: Store, s: Session, job: Job, att: Attempt, hb: Heartbeat, now: float) -> bool:
    ref = hb.checkpoint
    known = s.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job.id, Checkpoint.step == ref.step,
                                                 Checkpoint.uri == ref.uri))
    if known is not None:
        return False
    s.add(Checkpoint(job_id=job.id, attempt=att.number, step=ref.step, uri=ref.uri, world_size=ref.world_size,
                     save_seconds=ref.save_seconds, created_at=now))
    store.event(s, job.id, "checkpoint", f"checkpoint committed at step {ref.step}: {ref.uri}", now,
                attempt=att.number, step=ref.step, uri=ref.uri)
    enqueue_due(store, s, job, ref.step, ref.uri, now)  # spec.evaluation: due with its checkpoint, atomically
    return True


def _recorded(s: Session, job: Job, att: Attempt, type_: str, key: str) -> set:
    """``key`` of each of this attempt's events of ``type_``: what the trainer repeats in every
    heartbeat until it lands is recorded once."""
    seen = s.scalars(select(Event.data).where(Event.job_id == job.id, Event.attempt == att.number,
                                              Event.type == type_))
    return {d.get(key) for d in seen if isinstance(d, dict)}


def _skipped(store: Store, s: Session, job: Job, att: Attempt, hb: Heartbeat, now: float) -> bool:
    """One event per skipped checkpoint and attempt (the trainer repeats them until one lands)."""
    seen_steps = _recorded(s, job, att, "checkpoint_skipped", "step")
    added = False
    for sk in hb.skipped_checkpoints or []:
        if sk.step in seen_steps:
            continue
        store.event(s, job.id, "checkpoint_skipped", f"checkpoint step {sk.step} at {sk.uri} skipped: {sk.reason}",
                    now, attempt=att.number, step=sk.step, uri=sk.uri, reason=sk.reason)
        seen_steps.add(sk.step)
        added = True
    return added


def _resized(store: Store, s: Session, job: Job, att: Attempt, hb: Heartbeat, now: float) -> bool:
    """One 'resized' event per worker-group resize of an elastic attempt (the trainer repeats its
    newest ones in every heartbeat), with its pause and the steps it lost: none after a notice or
    for a grow (the group checkpointed its last step); after a node lost without notice, the steps
    past the checkpoint it resumed from, up to the newest step the old group reported."""
    seen_n = _recorded(s, job, att, "resized", "n")
    added = False
    for r in hb.resizes or []:
        if r.n in seen_n:
            continue
        last = r.last_step if r.last_step is not None else max(att.last_step, r.resumed_from_step)
        lost = max(0, last - r.resumed_from_step)
        pause = "" if r.pause_s is None else f" after a {r.pause_s:.1f} s pause"
        store.event(s, job.id, "resized", f"attempt {att.number}: {r.kind.replace('_', ' ')}, "
                    f"{r.from_world or '?'} -> {r.to_world} workers from step {r.resumed_from_step}{pause}, "
                    f"{lost} step(s) lost", now, attempt=att.number, steps_lost=lost, **r.model_dump())
        seen_n.add(r.n)
        added = True
    return added


def _final(store: Store, s: Session, att: Attempt, hb: Heartbeat, now: float) -> None:
    reason = hb.reason or _FINAL_REASONS[hb.status]
    att.final_status, att.final_reason = hb.status, reason.value
    # The final word the policy reads (policy.decide_attempt_end): the message naming the resource
    # and the fix, and the delay a temporary error asked for. Kept with the attempt's metrics (JSON).
    att.metrics = {**(att.metrics or {}), "final_message": (hb.message or "")[:1000],
                   "retry_after_s": hb.retry_after_s}
    store.event(s, att.job_id, "reported", f"attempt {att.number} reported {hb.status} ({reason.value})"
                + (f": {hb.message}" if hb.message else ""), now, attempt=att.number, step=hb.step)
