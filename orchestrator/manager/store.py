"""The durable record of every job: one transaction per state change, always with its event.

Callers get plain dicts back (never live ORM rows), so nothing outside this module holds a
session. Phase changes are compare-and-set on the job row (locked FOR UPDATE on PostgreSQL,
BEGIN IMMEDIATE on SQLite), which is what makes the API and the supervisor safe side by side.
Every phase change goes through ``Store.move``, which refuses a move that phases.TRANSITIONS
does not allow.
"""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.contract import EndReason
from orchestrator.errors import PermanentError, TemporaryError
from orchestrator.manager import db
from orchestrator.manager.models import Attempt, AttemptState, Checkpoint, Event, Job, Token
from orchestrator.manager.phases import ACTIVE, TERMINAL, WAITING, Phase, check_transition, is_legal
from orchestrator.manager.policy import INTERRUPTIONS, Action, AttemptEndDecision

# The phase a job moves to when its attempt ended, by the policy's action.
_PHASE_AFTER = {Action.RETRY: Phase.RECOVERING, Action.SUCCEED: Phase.SUCCEEDED,
                Action.FAIL: Phase.FAILED, Action.CANCEL: Phase.CANCELLED}


class ConflictError(PermanentError):
    """The same submission id was used for a different manifest."""


def row(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}


class Store:
    def __init__(self, url: str, schema: str | None = None):
        self.url, self.schema = url, schema
        self.engine = db.make_engine(url, schema)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        try:
            db.migrate(self.engine, self.schema)
        except OperationalError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise TemporaryError(f"cannot open the database {where} ({first}); check --database-url / "
                                 "BERTCTL_DATABASE_URL and that the server is up", 5.0) from None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[Session]:
        """One transaction: commits on success, rolls back on any exception.

        durable=False (reads, progress-only heartbeats) lets PostgreSQL acknowledge the commit
        before its WAL flush; call ``make_durable`` inside if the transaction turns out to change state.
        """
        with self._sessions() as s, s.begin():
            if durable:
                self.make_durable(s)
            yield s

    def make_durable(self, s: Session) -> None:
        if self.dialect == "postgresql":
            s.execute(text("SET LOCAL synchronous_commit TO ON"))

    # -- events ---------------------------------------------------------------------------------

    @staticmethod
    def event(s: Session, job_id: str, type_: str, message: str, now: float,
              attempt: int | None = None, **data: Any) -> None:
        s.add(Event(job_id=job_id, ts=now, type=type_, attempt=attempt, message=message, data=data))

    def events(self, job_id: str, after: int = 0, limit: int | None = 1000,
               type_: str | None = None) -> list[dict[str, Any]]:
        """A page of the job's events in order; ``limit=None`` reads them all (for sums over a
        job's whole history, which a page would cut short)."""
        with self.tx(durable=False) as s:
            q = select(Event).where(Event.job_id == job_id, Event.id > after)
            q = q.where(Event.type == type_) if type_ else q
            return [row(e) for e in s.scalars(q.order_by(Event.id).limit(limit))]

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(self, manifest: dict[str, Any], backend: str, now: float,
                   submission_id: str | None = None) -> tuple[dict[str, Any], bool]:
        """Record a validated manifest; the same submission id twice returns the first job."""
        if submission_id:
            found = self._by_submission(submission_id)
            if found:
                return self._same_submission(found, manifest), False
        name = manifest["metadata"]["name"]
        job = Job(id=f"{name}-{secrets.token_hex(3)}", name=name, submission_id=submission_id or None,
                  manifest=manifest, backend=backend, phase=Phase.PENDING.value, message="",
                  created_at=now, updated_at=now, current_attempt=0, restarts_used=0, next_launch_at=now,
                  cancel_requested=False, max_steps=manifest["spec"]["training"]["max_steps"], step=0, metrics={})
        try:
            with self.tx() as s:
                s.add(job)
                s.flush()
                self.event(s, job.id, "submitted", f"job {job.id} submitted", now, backend=backend)
        except IntegrityError:  # a concurrent submission with the same id won the race
            found = self._by_submission(submission_id) if submission_id else None
            if not found:
                raise
            return self._same_submission(found, manifest), False
        return row(job), True

    def _by_submission(self, submission_id: str) -> dict[str, Any] | None:
        with self.tx(durable=False) as s:
            job = s.scalar(select(Job).where(Job.submission_id == submission_id))
            return row(job) if job else None

    @staticmethod
    def _same_submission(found: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        if found["manifest"] != manifest:
            raise ConflictError(f"submission id already used by job {found['id']} with a different manifest; "
                                "use a new submission id")
        return found

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self.tx(durable=False) as s:
            job = s.get(Job, job_id)
            return row(job) if job else None

    def list_jobs(self, phase: str | None = None, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if phase:
            q = q.where(Job.phase == phase)
        if name:
            q = q.where(Job.name == name)
        with self.tx(durable=False) as s:
            return [row(j) for j in s.scalars(q)]

    def active_jobs(self) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Every job not yet finished, with its current attempt (the supervisor's work list)."""
        with self.tx(durable=False) as s:
            jobs = list(s.scalars(select(Job).where(Job.phase.in_([p.value for p in ACTIVE])).order_by(Job.created_at)))
            return [(row(j), self._attempt_row(s, j.id, j.current_attempt)) for j in jobs]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        with self.tx(durable=False) as s:
            q = select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)
            return [row(a) for a in s.scalars(q)]

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        with self.tx(durable=False) as s:
            q = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step, Checkpoint.id)
            return [row(c) for c in s.scalars(q)]

    def phase_counts(self) -> dict[str, int]:
        with self.tx(durable=False) as s:
            return dict(s.execute(select(Job.phase, func.count()).group_by(Job.phase)).all())

    def restart_counts(self) -> dict[str, int]:
        with self.tx(durable=False) as s:
            q = (select(Attempt.end_reason, func.count()).where(Attempt.end_reason.is_not(None),
                 Attempt.end_reason.not_in([EndReason.SUCCEEDED.value, EndReason.CANCELLED.value]))
                 .group_by(Attempt.end_reason))
            return dict(s.execute(q).all())

    def attempt_count(self) -> int:
        with self.tx(durable=False) as s:
            return s.scalar(select(func.count()).select_from(Attempt)) or 0

    @staticmethod
    def _attempt_row(s: Session, job_id: str, number: int) -> dict[str, Any] | None:
        if number < 1:
            return None
        att = s.scalar(select(Attempt).where(Attempt.job_id == job_id, Attempt.number == number))
        return row(att) if att else None

    @staticmethod
    def _lock_job(s: Session, job_id: str) -> Job | None:
        return s.scalar(select(Job).where(Job.id == job_id).with_for_update())

    @staticmethod
    def move(job: Job, target: Phase, now: float, message: str | None = None) -> None:
        """The one way a job changes phase (its row locked by the caller's transaction): raises
        phases.IllegalTransition for a move the table does not allow; a final phase stamps ended_at."""
        check_transition(Phase(job.phase), target)
        job.phase, job.updated_at = target.value, now
        if target in TERMINAL:
            job.ended_at = now
        if message is not None:
            job.message = message

    # -- attempts -------------------------------------------------------------------------------

    def start_attempt(self, job_id: str, number: int, token_hash: str, now: float) -> bool:
        """PENDING/RECOVERING -> LAUNCHING with a new attempt row and its token, if still due."""
        with self.tx() as s:
            job = self._lock_job(s, job_id)
            ok = (job is not None and is_legal(Phase(job.phase), Phase.LAUNCHING)
                  and job.current_attempt == number - 1 and not job.cancel_requested)
            if not ok:
                return False
            self.move(job, Phase.LAUNCHING, now)
            job.current_attempt = number
            s.add(Attempt(job_id=job_id, number=number, state=AttemptState.LAUNCHING.value, handle="", log_path="",
                          created_at=now, message="", heartbeats=0, last_step=0, checkpoint_seconds=0.0, metrics={}))
            s.add(Token(hash=token_hash, kind="attempt", job_id=job_id, attempt=number, created_at=now, revoked=False))
            self.event(s, job_id, "launching", f"launching attempt {number}", now, attempt=number)
            return True

    def record_launch(self, job_id: str, number: int, handle: str, log_path: str, now: float) -> None:
        with self.tx() as s:
            att = s.scalar(select(Attempt).where(Attempt.job_id == job_id, Attempt.number == number)
                           .with_for_update())
            if att is None or att.state != AttemptState.LAUNCHING.value:
                return
            att.state, att.handle, att.log_path = AttemptState.RUNNING.value, handle, log_path
            self.event(s, job_id, "launched", f"attempt {number} started (handle {handle})", now,
                       attempt=number, handle=handle)

    def end_attempt(self, job_id: str, number: int, reason: EndReason, decision: AttemptEndDecision, now: float,
                    exit_code: int | None = None, message: str = "") -> str | None:
        """Close a fenced attempt and move the job on as the policy decided; returns the new phase."""
        with self.tx() as s:
            job = self._lock_job(s, job_id)
            att = s.scalar(select(Attempt).where(Attempt.job_id == job_id, Attempt.number == number))
            if job is None or att is None or att.state == AttemptState.ENDED.value:
                return None
            self._close_attempt(s, job, att, reason, now, exit_code, message)
            return self._apply_decision(s, job, decision, now)

    def _close_attempt(self, s: Session, job: Job, att: Attempt, reason: EndReason, now: float,
                       exit_code: int | None, message: str) -> None:
        att.state, att.ended_at, att.end_reason = AttemptState.ENDED.value, now, reason.value
        att.exit_code, att.message = exit_code, message[:4000]
        newest = s.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.job_id == job.id,
                                                                  Checkpoint.step <= max(att.last_step, 0)))
        att.checkpoint_step_at_end = newest
        if reason is not EndReason.SUCCEEDED:
            att.steps_lost = max(0, att.last_step - (newest or 0))
        s.execute(update(Token).where(Token.job_id == job.id, Token.attempt == att.number).values(revoked=True))
        code = "" if exit_code is None else f", exit code {exit_code}"
        self.event(s, job.id, "attempt_ended", f"attempt {att.number} ended: {reason.value}{code}"
                   + (f" ({message})" if message else ""), now, attempt=att.number, reason=reason.value,
                   exit_code=exit_code, steps_lost=att.steps_lost)

    def _apply_decision(self, s: Session, job: Job, decision: AttemptEndDecision, now: float) -> str:
        action = decision.action
        if job.cancel_requested and action is Action.RETRY:
            action = Action.CANCEL  # a cancel that raced with a failure wins: never relaunch
        if action is Action.RETRY:
            job.restarts_used += 1
            job.next_launch_at = now + decision.delay_s
        self.move(job, _PHASE_AFTER[action], now, message=decision.why)
        self.event(s, job.id, job.phase.lower(), f"job {job.phase}: {decision.why}", now,
                   attempt=job.current_attempt, delay_s=decision.delay_s)
        return job.phase

    def request_cancel(self, job_id: str, now: float) -> str | None:
        """Cancel in any phase: at once when nothing runs, else flag it for the supervisor."""
        with self.tx() as s:
            job = self._lock_job(s, job_id)
            if job is None:
                return None
            if Phase(job.phase) in TERMINAL or job.cancel_requested:
                return job.phase
            job.updated_at = now
            if Phase(job.phase) in WAITING:
                self.move(job, Phase.CANCELLED, now, message="cancelled by a user")
                self.event(s, job_id, "cancelled", "job CANCELLED before its next attempt started", now)
            else:
                job.cancel_requested = True
                self.event(s, job_id, "cancel_requested", f"cancel requested; stopping attempt "
                           f"{job.current_attempt}", now, attempt=job.current_attempt)
            return job.phase

    def finish_cancel(self, job_id: str, now: float) -> None:
        """A cancel requested while no attempt is live any more: nothing to stop, just record it."""
        with self.tx() as s:
            job = self._lock_job(s, job_id)
            if job is None or Phase(job.phase) in TERMINAL:
                return
            self.move(job, Phase.CANCELLED, now, message="cancelled by a user")
            self.event(s, job_id, "cancelled", "job CANCELLED; no attempt was running", now)

    def note(self, job_id: str, type_: str, message: str, now: float, attempt: int | None = None) -> None:
        with self.tx() as s:
            self.event(s, job_id, type_, message, now, attempt=attempt)

    # -- tokens ---------------------------------------------------------------------------------

    def lookup_token(self, token_hash: str) -> dict[str, Any] | None:
        with self.tx(durable=False) as s:
            tok = s.get(Token, token_hash)
            return row(tok) if tok else None

    def mtbp_s(self, job_id: str, now: float) -> float | None:
        """Observed mean time between the interruptions that lost work: attempt run time per
        interruption that left steps to redo (an attempt that ended past its newest commit, or an
        elastic group that re-formed from an older step). A preemption whose notice fitted a
        checkpoint lost nothing; checkpointing more often would have saved nothing, so it does not
        shorten the `every_steps: auto` interval this feeds (contract.ENV_MTBP_S)."""
        attempts = self.attempts(job_id)
        interrupted = {r.value for r in INTERRUPTIONS}
        losses = sum(1 for a in attempts if a["end_reason"] in interrupted and (a["steps_lost"] or 0) > 0)
        losses += sum(1 for e in self.events(job_id, type_="resized", limit=None)
                      if (e["data"] or {}).get("steps_lost"))
        if not losses:
            return None
        run_s = sum((a["ended_at"] or now) - a["created_at"] for a in attempts)
        return run_s / losses
