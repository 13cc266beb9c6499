"""The supervisor: a reconcile loop that moves every active job one step towards its end.

``reconcile_once(now)`` is one iteration (tests step it). Per job it: carries out a cancel,
launches a due attempt, or polls the running one and, when it ended or stalled, fences it
(backend.terminate returns only when nothing of it runs) and applies the policy's decision.
Attempt N+1 is created only after attempt N is recorded ENDED, which happens only after the
backend confirmed it gone: the attempt number is the fencing token.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from orchestrator.contract import EXIT_REASONS, EndReason
from orchestrator.errors import PermanentError
from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.backends.base import AttemptStatus, Backend, LaunchRequest, RunState
from orchestrator.manager.models import AttemptState
from orchestrator.manager.phases import WAITING, Phase
from orchestrator.manager.policy import decide_attempt_end, unfenced_failure
from orchestrator.manager.store import Store

log = logging.getLogger("bertctl.manager")


class Supervisor:
    def __init__(self, store: Store, backends: dict[str, Backend], manager_url: str | Callable[[], str],
                 stall_grace_s: float = 5.0, cancel_grace_s: float | None = None, interval_s: float = 1.0):
        self.store, self.backends = store, backends
        self._url = manager_url
        self.stall_grace_s = stall_grace_s
        self.cancel_grace_s = cancel_grace_s  # None: the manifest's preemption deadline + 5 s
        self.interval_s = interval_s
        self._adopted_at: dict[tuple[str, int], float] = {}
        self._busy: set[str] = set()   # jobs whose attempt is being stopped in a background thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def manager_url(self) -> str:
        return self._url() if callable(self._url) else self._url

    # -- the loop -------------------------------------------------------------------------------

    def adopt(self, now: float) -> None:
        """At manager start: remember running attempts so their heartbeat clock restarts now
        (they could not report while we were down); poll decides whether they still live."""
        for job, att in self.store.active_jobs():
            if att and att["state"] != AttemptState.ENDED.value:
                self._adopted_at[(job["id"], att["number"])] = now
                self.store.note(job["id"], "adopting", f"manager started; checking attempt {att['number']}",
                                now, attempt=att["number"])

    def reconcile_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for job, att in self.store.active_jobs():
            try:
                self._reconcile(job, att, now)
            except Exception:  # one job's trouble must not stop the others; retried next iteration
                log.exception("reconcile of job %s failed; will retry", job["id"])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bertctl-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        self.adopt(time.time())
        while not self._stop.is_set():
            self.reconcile_once()
            self._stop.wait(self.interval_s)

    # -- one job --------------------------------------------------------------------------------

    def _reconcile(self, job: dict[str, Any], att: dict[str, Any] | None, now: float) -> None:
        if job["id"] in self._busy:
            return
        live = att is not None and att["state"] != AttemptState.ENDED.value
        if job["cancel_requested"]:
            self._cancel(job, att if live else None, now)
        elif Phase(job["phase"]) in WAITING:
            if now >= job["next_launch_at"] and not live:
                self._launch(job, now)
        elif live:
            self._watch(job, att, now)

    def _backend(self, job: dict[str, Any]) -> Backend:
        try:
            return self.backends[job["backend"]]
        except KeyError:
            raise PermanentError(f"job {job['id']} needs backend '{job['backend']}', which this manager "
                                 f"does not run; valid: {sorted(self.backends)}") from None

    def _launch(self, job: dict[str, Any], now: float) -> None:
        number = job["current_attempt"] + 1
        token = new_token()
        if not self.store.start_attempt(job["id"], number, hash_token(token), now):
            return
        backend = self._backend(job)
        request = LaunchRequest(job_id=job["id"], attempt=number, manifest=job["manifest"],
                                manager_url=self.manager_url, attempt_token=token,
                                mtbp_s=self.store.mtbp_s(job["id"], now))
        try:
            handle = backend.launch(request)
        except Exception as exc:  # the attempt never ran: fence whatever may exist, then decide
            reason = EndReason.INVALID_CONFIG if isinstance(exc, PermanentError) else EndReason.INFRASTRUCTURE
            self._end(job, number, "", reason, now, message=f"launch failed: {exc}")
            return
        self.store.record_launch(job["id"], number, handle, backend.log_path(job["id"], number, handle) or "", now)

    def _watch(self, job: dict[str, Any], att: dict[str, Any], now: float) -> None:
        if att["state"] == AttemptState.LAUNCHING.value:
            # The manager died between recording the attempt and learning its handle: the
            # process may exist; fence it through the backend's own records and retry.
            self._end(job, att["number"], "", EndReason.INFRASTRUCTURE, now,
                      message="the manager stopped while launching this attempt")
            return
        status = self._backend(job).poll(job["id"], att["number"], att["handle"])
        if status.state in (RunState.EXITED, RunState.GONE):
            self._end(job, att["number"], att["handle"], self._reason(att, status), now,
                      exit_code=status.exit_code, message=status.message)
        elif self._stalled(job, att, now):
            timeout = job["manifest"]["spec"]["recovery"]["heartbeat_timeout_s"]
            self._end_in_background(job, att["number"], att["handle"], EndReason.HEARTBEAT_TIMEOUT, now,
                                    grace_s=self.stall_grace_s, message=f"no heartbeat for {timeout:g}s; killed")

    def _stalled(self, job: dict[str, Any], att: dict[str, Any], now: float) -> bool:
        timeout = job["manifest"]["spec"]["recovery"]["heartbeat_timeout_s"]
        since = max(att["last_heartbeat_at"] or att["created_at"],
                    self._adopted_at.get((job["id"], att["number"]), 0.0))
        return now - since > timeout

    @staticmethod
    def _reason(att: dict[str, Any], status: AttemptStatus) -> EndReason:
        """The backend's own knowledge first, then the trainer's exit code, then its last word."""
        if status.reason is not None:
            return status.reason
        if status.state is RunState.EXITED and status.exit_code in EXIT_REASONS:
            return EXIT_REASONS[status.exit_code]
        if att["final_reason"]:
            return EndReason(att["final_reason"])
        return EndReason.WORKER_LOST

    def _cancel(self, job: dict[str, Any], att: dict[str, Any] | None, now: float) -> None:
        if att is None:
            self.store.finish_cancel(job["id"], now)
            return
        grace = self.cancel_grace_s
        if grace is None:
            grace = job["manifest"]["spec"]["checkpoint"]["preemption_deadline_s"] + 5.0
        self._end_in_background(job, att["number"], att["handle"], EndReason.CANCELLED, now, grace_s=grace,
                                message="cancelled by a user")

    def _end_in_background(self, job: dict[str, Any], number: int, handle: str, reason: EndReason, now: float,
                           grace_s: float, message: str) -> None:
        """Stopping with a grace period takes seconds: do it beside the loop so other jobs are
        still supervised meanwhile; the job is skipped until its attempt is fenced and recorded."""
        self._busy.add(job["id"])

        def run() -> None:
            try:
                self._end(job, number, handle, reason, now, message=message, grace_s=grace_s)
            except Exception:
                log.exception("stopping job %s attempt %d failed; will retry", job["id"], number)
            finally:
                self._busy.discard(job["id"])

        threading.Thread(target=run, name=f"bertctl-stop-{job['id']}", daemon=True).start()

    def _end(self, job: dict[str, Any], number: int, handle: str, reason: EndReason, now: float,
             exit_code: int | None = None, message: str = "", grace_s: float = 0.0) -> None:
        # Fence first: nothing of attempt `number` may run once it is recorded ENDED.
        started = time.monotonic()
        recovery = job["manifest"]["spec"]["recovery"]
        decision = decide_attempt_end(reason, job["restarts_used"], recovery["max_restarts"],
                                      recovery["backoff_s"], recovery["max_backoff_s"])
        try:
            self._backend(job).terminate(job["id"], number, handle, grace_s)
        except PermanentError as exc:
            # The backend cannot confirm the attempt is gone (no cluster config, no rights), and
            # retrying will not change that. Another attempt could run beside this one, so the
            # job fails instead of hanging or relaunching.
            decision = unfenced_failure(decision, exc)
            message = f"{message}; could not confirm the attempt stopped: {exc}".lstrip("; ")
        now += time.monotonic() - started  # recorded as ended when it was confirmed gone
        phase = self.store.end_attempt(job["id"], number, reason, decision, now, exit_code, message)
        self._adopted_at.pop((job["id"], number), None)
        if phase:
            log.info("job %s attempt %d ended (%s) -> %s", job["id"], number, reason.value, phase)
