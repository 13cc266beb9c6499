"""The supervisor: a reconcile loop that moves every active job one step towards its end.

``reconcile_once(now)`` is one iteration (tests step it). Per job it: carries out a cancel,
launches a due attempt, or polls the running one and, when it ended or missed its liveness
deadline, fences it (backend.terminate returns only when nothing of it runs) and applies the
policy's decision. Attempt N+1 is created only after attempt N is recorded ENDED, which happens
only after the backend confirmed it gone: the attempt number is the fencing token.

Every backend call that may wait (a launch, which on KubeRay first fences older attempts, and
every terminate) runs in a thread beside the loop: the job is skipped (``_busy``) until that
thread is done, so one draining cluster never holds up the supervision of other jobs.

Several replicas (manager/lease.py): the loop acts only while this replica holds the lease.
A new term (the first, or a takeover) begins by adopting every live attempt; the lease is checked
before each job and verified against the database (holder and epoch) just before an attempt is
recorded or launched, and an attempt that a newer term ended while this one was launching it is
stopped at once (its trainer is fenced off by its attempt number in any case).

Liveness: until its first training heartbeat (the job still LAUNCHING) an attempt has
``recovery.startup_timeout_s`` from its creation (or adoption) to start training; 'starting'
heartbeats are recorded but do not extend that deadline. Afterwards it may be silent at most
``recovery.heartbeat_timeout_s`` since its last heartbeat of any kind.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from orchestrator.contract import EXIT_REASONS, TRAINER_REFINES, EndReason
from orchestrator.errors import PermanentError
from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.backends.base import AttemptStatus, Backend, LaunchRequest, RunState
from orchestrator.manager.heartbeats import record_startup_phase
from orchestrator.manager.lease import Lease
from orchestrator.manager.models import AttemptState
from orchestrator.manager.phases import WAITING, Phase
from orchestrator.manager.policy import decide_attempt_end, unfenced_failure
from orchestrator.manager.store import Store
from orchestrator.spec import RecoverySpec

# For manifests stored before the field existed (the stored manifest is the one validated then).
DEFAULT_STARTUP_TIMEOUT_S: float = RecoverySpec.model_fields["startup_timeout_s"].default

log = logging.getLogger("bertctl.manager")


class Supervisor:
    def __init__(self, store: Store, backends: dict[str, Backend], manager_url: str | Callable[[], str],
                 stall_grace_s: float = 5.0, cancel_grace_s: float | None = None, interval_s: float = 1.0,
                 lease: Lease | None = None):
        self.store, self.backends = store, backends
        self.lease = lease  # None: this supervisor is the only one (tests, a single embedded manager)
        self._url = manager_url
        self.stall_grace_s = stall_grace_s
        self.cancel_grace_s = cancel_grace_s  # None: the manifest's preemption deadline + 5 s
        self.interval_s = interval_s
        self._adopted_at: dict[tuple[str, int], float] = {}
        self._busy: dict[str, threading.Thread] = {}  # job -> its launch or stop running beside the loop
        self.evaluations: Any = None  # manager/evaluations.EvaluationRunner: spec.evaluation, led like attempts
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def manager_url(self) -> str:
        return self._url() if callable(self._url) else self._url

    # -- the loop -------------------------------------------------------------------------------

    def adopt(self, now: float, why: str = "manager started") -> None:
        """At the start of a term (manager start, takeover): remember running attempts so their
        heartbeat clock restarts now (they may not have reached a supervisor meanwhile); poll
        decides whether they still live."""
        for job, att in self.store.active_jobs():
            if att and att["state"] != AttemptState.ENDED.value:
                self._adopted_at[(job["id"], att["number"])] = now
                self.store.note(job["id"], "adopting", f"{why}; checking attempt {att['number']}",
                                now, attempt=att["number"])

    def _elected(self) -> bool:
        """Whether this supervisor takes part in an election (else it is alone: a test steps it)."""
        return self.lease is not None and self.lease.started

    def leading(self) -> bool:
        """Whether this replica may act now (always, when it is alone)."""
        return not self._elected() or self.lease.held()

    def _term(self) -> int | None:
        """The epoch this replica supervises under (0 when alone), None while it does not."""
        return self.lease.epoch if self._elected() else 0

    def _confirmed(self, epoch: int | None) -> bool:
        """Just before acting: the database still says this replica supervises in ``epoch``."""
        return not self._elected() or self.lease.verify(epoch)

    def reconcile_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for job, att in self.store.active_jobs():
            if not self.leading():  # the lease was lost mid-iteration: stop at once
                return
            try:
                self._reconcile(job, att, now)
            except Exception:  # one job's trouble must not stop the others; retried next iteration
                log.exception("reconcile of job %s failed; will retry", job["id"])
        if self.evaluations is not None and self.leading():
            self.evaluations.reconcile_once(now)  # ended jobs too: their due evaluations still run

    def start(self) -> None:
        """Join the election (on SQLite: refuse to run beside another live manager), then loop."""
        if self.lease is not None:
            self.lease.start()
        self._thread = threading.Thread(target=self._run, name="bertctl-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout_s)
        if self._elected():  # hand over only once this replica's own launches and stops are done
            self.wait_idle(timeout_s)
            self.lease.stop()

    def wait_idle(self, timeout_s: float = 60.0, jobs: Iterable[str] | None = None) -> bool:
        """Wait for the launches and stops now running beside the loop (of ``jobs``, or all);
        True when they are done."""
        deadline = time.monotonic() + timeout_s
        wanted = set(self._busy) if jobs is None else set(jobs)
        for job_id in wanted:
            thread = self._busy.get(job_id)
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        return not wanted & set(self._busy)

    def _run(self) -> None:
        term: int | None = None
        while not self._stop.is_set():
            current = self._term()
            if current is not None:
                if current != term:
                    why = f"supervising (lease epoch {current})" if self._elected() else "manager started"
                    self.adopt(time.time(), why)
                self.reconcile_once()
            term = current
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
        """Record attempt N+1 (the store refuses unless N is ENDED), then launch it beside the loop."""
        number = job["current_attempt"] + 1
        token = new_token()
        backend = self._backend(job)
        epoch = self._term()
        if not self._confirmed(epoch) or not self.store.start_attempt(job["id"], number, hash_token(token), now):
            return
        request = LaunchRequest(job_id=job["id"], attempt=number, manifest=job["manifest"],
                                manager_url=self.manager_url, attempt_token=token,
                                mtbp_s=self.store.mtbp_s(job["id"], now))
        self._beside(job["id"], f"launch-{job['id']}",
                     lambda: self._launch_now(job, backend, request, now, epoch))

    def _launch_now(self, job: dict[str, Any], backend: Backend, request: LaunchRequest, now: float,
                    epoch: int | None = 0) -> None:
        number = request.attempt
        if not self._confirmed(epoch):
            # Another replica took over since the attempt was recorded: it finds the attempt
            # LAUNCHING without a handle, fences it through the backend and retries it.
            log.warning("job %s attempt %d not launched: this replica no longer supervises", job["id"], number)
            return
        try:
            handle = backend.launch(request)
        except Exception as exc:  # the attempt never ran: fence whatever may exist, then decide
            reason = EndReason.INVALID_CONFIG if isinstance(exc, PermanentError) else EndReason.INFRASTRUCTURE
            self._end(job, number, "", reason, now, message=f"launch failed: {exc}")
            return
        self.store.record_launch(job["id"], number, handle, backend.log_path(job["id"], number, handle) or "", now)
        self._stop_if_orphaned(job, backend, number, handle)

    def _stop_if_orphaned(self, job: dict[str, Any], backend: Backend, number: int, handle: str) -> None:
        """A newer term ended this attempt while this replica was launching it (the recorded attempt
        does not carry our handle): what we started must not run beside the attempt that follows."""
        att = next((a for a in self.store.attempts(job["id"]) if a["number"] == number), None)
        if att is not None and att["state"] == AttemptState.ENDED.value and att["handle"] != handle:
            log.warning("job %s attempt %d was ended by another replica while launching; stopping it",
                        job["id"], number)
            backend.terminate(job["id"], number, handle, 0.0)

    def _watch(self, job: dict[str, Any], att: dict[str, Any], now: float) -> None:
        if att["state"] == AttemptState.LAUNCHING.value:
            # The manager died between recording the attempt and learning its handle: the
            # process may exist; fence it through the backend's own records and retry.
            self._end_in_background(job, att["number"], "", EndReason.INFRASTRUCTURE, now, grace_s=0.0,
                                    message="the manager stopped while launching this attempt")
            return
        status = self._backend(job).poll(job["id"], att["number"], att["handle"])
        if status.state in (RunState.EXITED, RunState.GONE):
            self._end_in_background(job, att["number"], att["handle"], self._reason(att, status), now,
                                    grace_s=0.0, exit_code=status.exit_code, message=status.message,
                                    final=att.get("metrics"))
            return
        if status.state is RunState.STARTING and status.message and status.message[:200] != att.get("startup_phase"):
            # What the backend sees the attempt wait for (pods Pending for capacity, an image pull):
            # recorded like a trainer's 'starting' phase, one event per change.
            record_startup_phase(self.store, job["id"], att["number"], status.message, now)
        overdue = self._overdue(job, att, now)
        if overdue is not None:
            reason, message = overdue
            self._end_in_background(job, att["number"], att["handle"], reason, now,
                                    grace_s=self.stall_grace_s, message=message)

    def _overdue(self, job: dict[str, Any], att: dict[str, Any], now: float) -> tuple[EndReason, str] | None:
        """Why the attempt missed its liveness deadline (module docstring), or None if it did not."""
        recovery = job["manifest"]["spec"]["recovery"]
        adopted = self._adopted_at.get((job["id"], att["number"]), 0.0)
        if job["phase"] == Phase.LAUNCHING.value:  # no training heartbeat yet
            limit = recovery.get("startup_timeout_s", DEFAULT_STARTUP_TIMEOUT_S)
            if now - max(att["created_at"], adopted) <= limit:
                return None
            phase = att.get("startup_phase") or "none reported"
            return EndReason.INFRASTRUCTURE, (f"not training {limit:g}s after it started (last startup phase: "
                                              f"{phase}); killed. Raise recovery.startup_timeout_s if the "
                                              "cluster needs longer to scale up and pull the image")
        limit = recovery["heartbeat_timeout_s"]
        if now - max(att["last_heartbeat_at"] or att["created_at"], adopted) <= limit:
            return None
        return EndReason.HEARTBEAT_TIMEOUT, f"no heartbeat for {limit:g}s; killed"

    @staticmethod
    def _reason(att: dict[str, Any], status: AttemptStatus) -> EndReason:
        """The backend's own knowledge first, then the trainer's exit code (which its last word may
        refine: a lost node exits 69 like any temporary failure), then its last word."""
        if status.reason is not None:
            return status.reason
        if status.state is RunState.EXITED and status.exit_code in EXIT_REASONS:
            said = att["final_reason"] and EndReason(att["final_reason"])
            return said if said in TRAINER_REFINES.get(status.exit_code, ()) else EXIT_REASONS[status.exit_code]
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
                           grace_s: float, message: str, exit_code: int | None = None,
                           final: dict[str, Any] | None = None) -> None:
        """Fencing may take minutes (a grace period, pods draining): do it beside the loop so other
        jobs are still supervised meanwhile; the job is skipped until its attempt is fenced and recorded.
        ``final``: the trainer's final word (heartbeats._final), which the policy reads."""
        self._beside(job["id"], f"stop-{job['id']}", lambda: self._end(
            job, number, handle, reason, now, exit_code=exit_code, message=message, grace_s=grace_s, final=final))

    def _beside(self, job_id: str, name: str, work: Callable[[], None]) -> None:
        """Run one job's slow backend work in its own thread; the loop skips the job meanwhile.
        A failure is logged and the job is looked at again on the next iteration."""
        def run() -> None:
            try:
                work()
            except Exception:
                log.exception("%s failed; will retry", name)
            finally:
                self._busy.pop(job_id, None)

        thread = threading.Thread(target=run, name=f"bertctl-{name}", daemon=True)
        self._busy[job_id] = thread
        thread.start()

    def _end(self, job: dict[str, Any], number: int, handle: str, reason: EndReason, now: float,
             exit_code: int | None = None, message: str = "", grace_s: float = 0.0,
             final: dict[str, Any] | None = None) -> None:
        if not self.leading():  # decided in a term that has ended: the next supervisor judges again
            return
        # Fence first: nothing of attempt `number` may run once it is recorded ENDED.
        started = time.monotonic()
        recovery = job["manifest"]["spec"]["recovery"]
        final = final or {}
        decision = decide_attempt_end(reason, job["restarts_used"], recovery["max_restarts"],
                                      recovery["backoff_s"], recovery["max_backoff_s"],
                                      retry_after_s=final.get("retry_after_s"), detail=final.get("final_message") or "")
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
