"""Evaluations of committed checkpoints (``spec.evaluation``): which are due, running them, their scores.

Lifecycle of one evaluation row (one checkpoint step of one job):

- **due**: a heartbeat that commits a checkpoint enqueues it (``enqueue_due``, in the heartbeat's
  transaction) when it is the Nth, 2Nth, ... committed step of the job or the final one
  (step == training.max_steps). PENDING.
- **launch**: the leading replica's supervisor loop (``EvaluationRunner.reconcile_once``) runs at
  most one evaluation per job at a time, the newest pending step first; older pending steps are
  SKIPPED (an event says so): the scores track the newest checkpoint instead of a queue that grows
  while training outruns evaluation and whose checkpoints retention (keep_last) deletes. RUNNING.
- **report**: the evaluation process POSTs each task's scores or failure with its own token
  (``record_report``); the token authorizes only that evaluation while it runs.
- **end**: when its process exits the evaluation is SUCCEEDED (every task scored) or FAILED (a
  task failed or never reported; a process past its budget is killed first). Never the job's state.

A job that ended SUCCEEDED or FAILED still gets its due evaluations run (the final checkpoint is
the one users want scored); a CANCELLED job's pending ones are ABANDONED and a running one is
stopped: cancel means stop spending resources on this job.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections import defaultdict
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.contract import EvaluationReport
from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.backends.evaluation_local import EvaluationRequest
from orchestrator.manager.models import Checkpoint, Evaluation, EvaluationScore, Job
from orchestrator.manager.phases import Phase
from orchestrator.manager.store import Store, row

log = logging.getLogger("bertctl.manager.evaluations")
# Beyond the tasks' budgets: interpreter and torch start, checkpoint export, reports.
STARTUP_MARGIN_S = 300.0
STOP_GRACE_S = 5.0


class State(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"      # a newer checkpoint was due before this one started
    ABANDONED = "abandoned"  # its job was cancelled


OPEN = (State.PENDING.value, State.RUNNING.value)


class ReportOutcome(str, enum.Enum):
    OK = "ok"
    UNKNOWN = "unknown"      # no such evaluation of this job (404)
    FORBIDDEN = "forbidden"  # not this evaluation's token (401)
    ENDED = "ended"          # the evaluation is not running any more (409)
    INVALID = "invalid"      # a step or task this evaluation does not have (422)


# -- what is due (pure) ----------------------------------------------------------------------------

def is_due(ordinal: int, step: int, every: int, max_steps: int) -> bool:
    """The ``ordinal``-th committed checkpoint (1-based) at ``step``: every Nth, and the final one."""
    return ordinal % every == 0 or step >= max_steps


def pick_next(pending: list[int], running: bool) -> tuple[int | None, list[int]]:
    """(step to launch now or None, steps to skip): one at a time, the newest first."""
    if running or not pending:
        return None, []
    newest = max(pending)
    return newest, sorted(s for s in pending if s != newest)


def _spec(manifest: dict[str, Any]) -> dict[str, Any] | None:
    return (manifest.get("spec") or {}).get("evaluation")


def enqueue_due(store: Store, s: Session, job: Job, step: int, uri: str, now: float) -> None:
    """Inside the heartbeat's transaction that recorded a new committed checkpoint at ``step``."""
    spec = _spec(job.manifest)
    if not spec:
        return
    ordinal = s.scalar(select(func.count(func.distinct(Checkpoint.step)))
                       .where(Checkpoint.job_id == job.id, Checkpoint.step <= step)) or 0
    if not is_due(ordinal, step, spec.get("every_checkpoints", 1), job.max_steps):
        return
    if s.scalar(select(Evaluation.id).where(Evaluation.job_id == job.id, Evaluation.step == step)) is not None:
        return
    s.add(Evaluation(job_id=job.id, step=step, checkpoint_uri=uri, state=State.PENDING.value, backend=job.backend,
                     handle="", token_hash="", log_path="", message="", created_at=now))
    store.event(s, job.id, "evaluation_due", f"checkpoint step {step} is due for evaluation on "
                f"{', '.join(t['name'] for t in spec['tasks'])}", now, step=step, uri=uri)


# -- reports from the evaluation process -----------------------------------------------------------

def record_report(store: Store, job_id: str, report: EvaluationReport, token: str, now: float) -> ReportOutcome:
    with store.tx() as s:
        ev = s.scalar(select(Evaluation).where(Evaluation.id == report.evaluation_id).with_for_update())
        if ev is None or ev.job_id != job_id:
            return ReportOutcome.UNKNOWN
        if not ev.token_hash or not hmac.compare_digest(ev.token_hash, hash_token(token)):
            return ReportOutcome.FORBIDDEN
        if ev.state != State.RUNNING.value:
            return ReportOutcome.ENDED
        kinds = {t["name"]: t["task"] for t in _spec(s.get(Job, job_id).manifest)["tasks"]}
        if report.step != ev.step or report.task not in kinds:
            return ReportOutcome.INVALID
        if s.scalar(select(EvaluationScore.id).where(EvaluationScore.evaluation_id == ev.id,
                                                     EvaluationScore.task == report.task)) is not None:
            return ReportOutcome.OK  # a retried report that did land: once is enough
        _add_score(s, ev, report.task, kinds[report.task], report.status, now, report.metrics,
                   report.examples_seen, report.validation_examples, report.seconds, report.message or "")
        if report.status == "succeeded":
            store.event(s, job_id, "evaluation_scores", f"step {ev.step} {report.task}: {fmt_metrics(report.metrics)}",
                        now, step=ev.step, task=report.task, metrics=report.metrics)
        else:
            store.event(s, job_id, "evaluation_failed", f"step {ev.step} {report.task} failed: {report.message}",
                        now, step=ev.step, task=report.task, reason=report.message)
        return ReportOutcome.OK


def _add_score(s: Session, ev: Evaluation, task: str, kind: str, status: str, now: float,
               metrics: dict[str, float] | None = None, examples_seen: int | None = None,
               validation_examples: int | None = None, seconds: float | None = None, message: str = "") -> None:
    s.add(EvaluationScore(evaluation_id=ev.id, job_id=ev.job_id, step=ev.step, task=task, kind=kind, status=status,
                          metrics=metrics or {}, examples_seen=examples_seen, validation_examples=validation_examples,
                          seconds=seconds, message=message[:4000], created_at=now))


def fmt_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "no metrics"


# -- the API's view ------------------------------------------------------------------------------

def job_evaluations(store: Store, job_id: str) -> dict[str, Any]:
    """Every evaluation of the job with its tasks' outcomes, and the newest scores per task."""
    with store.tx(durable=False) as s:
        evs = [row(e) for e in s.scalars(select(Evaluation).where(Evaluation.job_id == job_id)
                                         .order_by(Evaluation.step))]
        scores = [row(c) for c in s.scalars(select(EvaluationScore).where(EvaluationScore.job_id == job_id)
                                            .order_by(EvaluationScore.step, EvaluationScore.id))]
    by_eval: dict[int, list[dict[str, Any]]] = defaultdict(list)
    latest: dict[str, dict[str, Any]] = {}
    for c in scores:
        task = {k: c[k] for k in ("task", "kind", "status", "metrics", "examples_seen", "validation_examples",
                                  "seconds", "message")}
        by_eval[c["evaluation_id"]].append(task)
        if c["status"] == "succeeded":
            latest[c["task"]] = {"step": c["step"], "kind": c["kind"], "metrics": c["metrics"]}
    out = [{**{k: e[k] for k in ("id", "step", "checkpoint_uri", "state", "message", "created_at", "started_at",
                                 "ended_at")}, "tasks": by_eval.get(e["id"], [])} for e in evs]
    return {"evaluations": out, "latest": latest}


# -- the runner (the leading replica's supervisor loop drives it) ------------------------------------

class EvaluationRunner:
    """``launchers``: backend name -> a launcher (launch / poll / terminate / log_path / cleanup),
    see backends/evaluation_local.py. ``confirm``: whether this replica still supervises (checked
    against the database just before a launch, like the supervisor's own launches)."""

    def __init__(self, store: Store, launchers: dict[str, Any], manager_url: Callable[[], str],
                 confirm: Callable[[], bool] = lambda: True):
        self.store, self.launchers = store, launchers
        self._url, self._confirm = manager_url, confirm

    def reconcile_once(self, now: float) -> None:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ev in self._open():
            groups[ev["job_id"]].append(ev)
        for evs in groups.values():
            try:
                self._reconcile_job(evs, now)
            except Exception:  # one job's trouble never stops the others (or the supervisor)
                log.exception("evaluations of job %s: reconcile failed; will retry", evs[0]["job_id"])

    def _open(self) -> list[dict[str, Any]]:
        with self.store.tx(durable=False) as s:
            q = (select(Evaluation, Job.phase, Job.cancel_requested, Job.manifest)
                 .join(Job, Job.id == Evaluation.job_id)
                 .where(Evaluation.state.in_(OPEN)).order_by(Evaluation.job_id, Evaluation.step))
            return [{**row(ev), "job_phase": phase, "cancelled": cancel or phase == Phase.CANCELLED.value,
                     "manifest": manifest} for ev, phase, cancel, manifest in s.execute(q)]

    def _reconcile_job(self, evs: list[dict[str, Any]], now: float) -> None:
        running = [e for e in evs if e["state"] == State.RUNNING.value]
        pending = {e["step"]: e for e in evs if e["state"] == State.PENDING.value}
        if evs[0]["cancelled"]:
            for ev in running:
                self._launcher(ev).terminate(ev["job_id"], ev["step"], ev["handle"], STOP_GRACE_S)
            for ev in running + list(pending.values()):
                self._close(ev, State.ABANDONED, now, "its job was cancelled", "evaluation_abandoned")
            return
        still = [ev for ev in running if not self._watch(ev, now)]
        launch, skip = pick_next(sorted(pending), bool(still))
        for step in skip:
            self._close(pending[step], State.SKIPPED, now, f"a newer checkpoint (step {launch}) was due before this "
                        "one started; one evaluation runs at a time per job", "evaluation_skipped")
        if launch is not None and self._confirm():
            self._launch(pending[launch], now)

    def _launcher(self, ev: dict[str, Any]):
        launcher = self.launchers.get(ev["backend"])
        if launcher is None:
            raise LookupError(f"backend '{ev['backend']}' of this manager runs no evaluations; valid: "
                              f"{sorted(self.launchers)}")
        return launcher

    def _launch(self, ev: dict[str, Any], now: float) -> None:
        token = new_token()
        if not self._mark_running(ev["id"], hash_token(token), now):
            return
        try:
            launcher = self._launcher(ev)
            req = EvaluationRequest(job_id=ev["job_id"], evaluation_id=ev["id"], step=ev["step"],
                                    checkpoint_uri=ev["checkpoint_uri"], evaluation=_spec(ev["manifest"]),
                                    manifest=ev["manifest"], manager_url=self._url(), token=token)
            handle = launcher.launch(req)
        except Exception as exc:  # never the job's problem: the evaluation failed, and says why
            log.warning("evaluation of %s step %d not launched: %s", ev["job_id"], ev["step"], exc)
            self._close({**ev, "state": State.RUNNING.value}, State.FAILED, now, f"launch failed: {exc}",
                        "evaluation_failed")
            return
        with self.store.tx() as s:
            row_ = s.get(Evaluation, ev["id"])
            row_.handle, row_.log_path = handle, launcher.log_path(ev["job_id"], ev["step"]) or ""
            tasks = ", ".join(t["name"] for t in _spec(ev["manifest"])["tasks"])
            self.store.event(s, ev["job_id"], "evaluation_started", f"evaluating checkpoint step {ev['step']} on "
                             f"{tasks} ({ev['checkpoint_uri']})", now, step=ev["step"], handle=handle)

    def _mark_running(self, eval_id: int, token_hash: str, now: float) -> bool:
        with self.store.tx() as s:
            ev = s.scalar(select(Evaluation).where(Evaluation.id == eval_id).with_for_update())
            if ev is None or ev.state != State.PENDING.value:
                return False
            ev.state, ev.token_hash, ev.started_at = State.RUNNING.value, token_hash, now
            return True

    def _watch(self, ev: dict[str, Any], now: float) -> bool:
        """True when the evaluation ended (recorded here)."""
        launcher = self._launcher(ev)
        if not ev["handle"]:  # launched by a replica that stopped before it recorded the handle
            self._close(ev, State.FAILED, now, "the manager stopped while launching it", "evaluation_failed")
            return True
        status = launcher.poll(ev["job_id"], ev["step"], ev["handle"])
        limit = _budget_s(ev["manifest"]) + STARTUP_MARGIN_S
        if status.running and now - (ev["started_at"] or now) <= limit:
            return False
        why = ""
        if status.running:
            launcher.terminate(ev["job_id"], ev["step"], ev["handle"], STOP_GRACE_S)
            why = f"ran past its tasks' budgets plus {STARTUP_MARGIN_S:g}s ({limit:g}s); killed"
        elif status.exit_code not in (0, None):
            why = f"the evaluation process exited with code {status.exit_code}"
        elif status.exit_code is None:
            why = status.message
        launcher.cleanup(ev["job_id"], ev["step"], ev["handle"])
        self._finish(ev, now, why)
        return True

    def _finish(self, ev: dict[str, Any], now: float, why: str) -> None:
        """Tasks without a report fail with ``why`` (or 'never reported'); then the evaluation ends."""
        tasks = {t["name"]: t["task"] for t in _spec(ev["manifest"])["tasks"]}
        with self.store.tx() as s:
            row_ = s.scalar(select(Evaluation).where(Evaluation.id == ev["id"]).with_for_update())
            if row_ is None or row_.state != State.RUNNING.value:
                return
            got = {c.task: c for c in s.scalars(select(EvaluationScore)
                                                .where(EvaluationScore.evaluation_id == ev["id"]))}
            missing = [name for name in tasks if name not in got]
            where = f"; its output: {ev['log_path']}" if ev["log_path"] else ""
            for name in missing:
                _add_score(s, row_, name, tasks[name], "failed", now,
                           message=f"{why or 'the evaluation process ended'} before reporting this task{where}")
            failed = sorted(n for n, c in got.items() if c.status != "succeeded") + missing
            self._end_row(s, row_, State.FAILED if failed else State.SUCCEEDED, now,
                          f"failed: {', '.join(failed)}" + (f" ({why})" if why else "") if failed else "")
            if failed:
                self.store.event(s, ev["job_id"], "evaluation_failed", f"evaluation of step {ev['step']} ended with "
                                 f"failed tasks {failed}" + (f": {why}" if why else "") + where, now,
                                 step=ev["step"], failed=failed, reason=why)
            scored = {n: c.metrics for n, c in got.items() if c.status == "succeeded"}
            self.store.event(s, ev["job_id"], "evaluation_finished", f"evaluation of step {ev['step']} finished: "
                             + ("; ".join(f"{n} {fmt_metrics(m)}" for n, m in scored.items()) or "no scores"),
                             now, step=ev["step"], scores=scored)

    def _close(self, ev: dict[str, Any], state: State, now: float, message: str, event: str) -> None:
        with self.store.tx() as s:
            row_ = s.scalar(select(Evaluation).where(Evaluation.id == ev["id"]).with_for_update())
            if row_ is None or row_.state != ev["state"]:
                return
            self._end_row(s, row_, state, now, message)
            self.store.event(s, ev["job_id"], event, f"evaluation of step {ev['step']} {state.value}: {message}",
                             now, step=ev["step"], reason=message)

    @staticmethod
    def _end_row(s: Session, ev: Evaluation, state: State, now: float, message: str) -> None:
        ev.state, ev.ended_at, ev.message = state.value, now, message[:4000]
        ev.token_hash = ""  # its token authorizes nothing any more


def _budget_s(manifest: dict[str, Any]) -> float:
    return sum(float((t.get("budget") or {}).get("max_seconds", 900.0)) for t in _spec(manifest)["tasks"])
