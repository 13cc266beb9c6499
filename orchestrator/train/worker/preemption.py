"""Preemption notice: SIGTERM or a notice file -> every rank stops after the same step.

Why a file and not only a signal: under Ray Train the training function runs in a thread of a
worker *actor* (ray/train/v2/_internal/execution/worker_group/thread_runner.py), so it cannot
install a signal handler, and a SIGTERM that reaches the actor process itself is turned into
``SystemExit`` by Ray (ray/_private/worker.py, ``Worker.main_loop``): the worker dies without a
checkpoint. The driver, where SIGTERM arrives, owns the controller and worker actors, and
``ray.init`` makes SIGTERM call ``sys.exit`` there, which tears them all down. So:

* driver: ``PreemptionWatcher(deadline, notice_file).install(relay=True)`` AFTER ``ray.init``
  replaces Ray's exit-on-SIGTERM with a handler that only sets a flag; a relay thread then
  creates the notice file (the handler itself does no I/O) and the driver keeps waiting for
  ``fit()`` to return.
* Kubernetes: the pod's preStop hook creates the notice file on every pod (SIGTERM to
  ``ray start --block`` would kill the node's workers at once).
* workers: ``PreemptionWatcher(deadline, notice_file)`` (no install) polls the file once per
  optimizer step; ``poll()`` all-reduces the flag and the smallest time left, so every rank
  sees the same decision after the same step, even ranks on pods that got no notice.

See docs/preemption.md for the loop's side.
"""

from __future__ import annotations

import enum
import os
import signal
import threading
import time
from typing import Callable

from orchestrator.contract import ENV_NOTICE_FILE
from orchestrator.errors import PermanentError

# Saving is worth starting only if it should end this much before the deadline: the estimate
# comes from earlier saves and a preemption save also has to report and exit afterwards.
DEFAULT_SAFETY = 1.25


class StopRequest(str, enum.Enum):
    """What every rank does after this step (the worker's side; the manager's retry policy is
    ``manager.policy.AttemptEndDecision``)."""

    CONTINUE = "continue"
    CHECKPOINT_AND_STOP = "checkpoint_and_stop"   # save + commit, report preempted, exit 75
    STOP_WITHOUT_CHECKPOINT = "stop_without_checkpoint"  # too late: leave any partial uncommitted


def stop_request(stop: bool, time_left_s: float, save_cost_s: float | None,
                 safety: float = DEFAULT_SAFETY) -> StopRequest:
    """Pure policy. With no measured save cost yet, try to save: an uncommitted partial is harmless."""
    if not stop:
        return StopRequest.CONTINUE
    if time_left_s <= 0:
        return StopRequest.STOP_WITHOUT_CHECKPOINT
    if save_cost_s is None or save_cost_s * safety <= time_left_s:
        return StopRequest.CHECKPOINT_AND_STOP
    return StopRequest.STOP_WITHOUT_CHECKPOINT


class PreemptionWatcher:
    """Watches for a preemption notice in this process; ``poll``/``should_stop`` agree across ranks."""

    def __init__(self, deadline_s: float, notice_file: str | None = None, *,
                 clock: Callable[[], float] = time.time,
                 probes: list[Callable[[], float | None]] | None = None):
        """``probes``: notices of a NODE of the group (``regroup.NodeDrainWatch``: this rank's node),
        each returning a deadline (unix s, inf when unknown) once given, else None. The notice file
        and SIGTERM are notices to the whole ATTEMPT (the driver's own node is going). After
        ``poll``, ``attempt_wide`` says which kind every rank agreed on: an elastic attempt
        re-forms on the survivors after a node's notice, and ends after the attempt's."""
        if deadline_s <= 0:
            raise PermanentError(f"preemption deadline must be > 0 s, got {deadline_s}; "
                                 "set checkpoint.preemption_deadline_s")
        self.deadline_s = float(deadline_s)
        self.notice_file = notice_file if notice_file is not None else os.environ.get(ENV_NOTICE_FILE)
        self._clock = clock
        self._probes = list(probes or [])
        self._probe_deadline: float | None = None
        self._signalled_at: float | None = None  # written by the signal handler only
        self._notice_at: float | None = None
        self._attempt_notice = False  # the notice is the attempt's own (file / SIGTERM), not a node's
        self._previous = None
        self._installed = False
        self._relay: threading.Thread | None = None
        self._stop_relay = threading.Event()
        self.attempt_wide = False  # set by poll(): some rank has the attempt's own notice

    # --- installation (driver / main thread) ---------------------------------------------------
    def install(self, relay: bool = False) -> "PreemptionWatcher":
        """Take over SIGTERM if this is the main thread; elsewhere only the notice file counts.

        ``relay=True`` starts a thread that writes the notice file once SIGTERM arrived, so
        processes that share the file (Ray worker actors on this node) see the notice.
        """
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        if relay and self.notice_file:
            clear_notice(self.notice_file)  # a previous attempt's notice must not stop this one
            self._relay = threading.Thread(target=self._relay_loop, name="preemption-relay", daemon=True)
            self._relay.start()
        return self

    def uninstall(self) -> None:
        """Give SIGTERM back to whoever had it before (Ray's handler, or the default)."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
        self._stop_relay.set()
        if self._relay is not None:
            self._relay.join(timeout=2)
            self._relay = None

    def __enter__(self) -> "PreemptionWatcher":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _on_sigterm(self, signum, frame) -> None:
        # Signal context: set one attribute, nothing else (no locks, no I/O, no logging).
        if self._signalled_at is None:
            self._signalled_at = self._clock()

    def _relay_loop(self) -> None:
        while not self._stop_relay.wait(0.05):
            if self._signalled_at is not None:
                write_notice(self.notice_file, self._signalled_at)
                return

    # --- local view -----------------------------------------------------------------------------
    def requested(self) -> bool:
        """True once SIGTERM arrived here, the notice file exists (one stat per call) or a probe fired."""
        if self._notice_at is None:
            self._notice_at = self._signalled_at if self._signalled_at is not None else self._file_time()
            self._attempt_notice = self._notice_at is not None
        if self._notice_at is None and self._probe_deadline is None:
            self._probe_deadline = self._check_probes()
            if self._probe_deadline is not None:
                self._notice_at = self._clock()
        return self._notice_at is not None

    @property
    def notice_time(self) -> float | None:
        self.requested()
        return self._notice_at

    def time_left(self) -> float:
        """Seconds until the deadline, measured from the notice; infinite before any notice."""
        if not self.requested():
            return float("inf")
        left = self.deadline_s - (self._clock() - self._notice_at)
        if self._probe_deadline is not None:  # a source that knows the real deadline wins if sooner
            left = min(left, self._probe_deadline - self._clock())
        return left

    def _check_probes(self) -> float | None:
        deadlines = [d for d in (probe() for probe in self._probes) if d is not None]
        return min(deadlines) if deadlines else None

    def _file_time(self) -> float | None:
        if not self.notice_file:
            return None
        try:
            # mtime is when the notice was given (a preStop hook's `touch`, or the relay),
            # so the deadline is measured from the notice, not from when this rank looked.
            return min(os.stat(self.notice_file).st_mtime, self._clock())
        except FileNotFoundError:
            return None

    # --- agreement across ranks -----------------------------------------------------------------
    def should_stop(self, step_flag: bool | None = None) -> bool:
        """Collective: True on every rank if any rank has a notice (call once per step, on all ranks)."""
        local = self.requested() if step_flag is None else bool(step_flag)
        stop, _, _ = _all_reduce_stop(local, self.time_left(), self._attempt_notice)
        self._adopt(stop)
        return stop

    def poll(self, save_cost_s: float | None, safety: float = DEFAULT_SAFETY) -> StopRequest:
        """Collective, once per optimizer step after it finished: what every rank does next. The
        training loop agrees on the notice inside its per-step metrics collective instead
        (``local_view`` in, ``decide`` out: worker/metrics.py)."""
        return self.decide(*_all_reduce_stop(*self.local_view()), save_cost_s, safety)

    def local_view(self) -> tuple[bool, float, bool]:
        """This rank's (notice, time left, the notice is the attempt's own), for the collective."""
        return self.requested(), self.time_left(), self._attempt_notice

    def decide(self, stop: bool, min_left_s: float, attempt_wide: bool, save_cost_s: float | None,
               safety: float = DEFAULT_SAFETY) -> StopRequest:
        """What every rank does next, from the view every rank agreed on."""
        self._adopt(stop)
        self.attempt_wide = attempt_wide
        return stop_request(stop, min_left_s, save_cost_s, safety)

    def _adopt(self, stop: bool) -> None:
        # A rank that learned of the notice from a peer starts its own deadline clock now.
        if stop and not self.requested():
            self._notice_at = self._clock()


def write_notice(path: str, at: float | None = None) -> None:
    """Create the notice file atomically (readers never see a half-written one)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{at if at is not None else time.time()}\n")
    if at is not None:
        os.utime(tmp, (at, at))
    os.replace(tmp, path)


def clear_notice(path: str) -> None:
    """Remove a notice left by an earlier attempt (the driver does this before launching workers)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _all_reduce_stop(local: bool, time_left_s: float, attempt_wide: bool = False) -> tuple[bool, float, bool]:
    """MAX of the flag, MIN of the time left and MAX of the attempt-wide flag, in one collective."""
    # MAX of -time_left is MIN of time_left; inf stays representable in float64.
    stop, neg_left, wide = max_over_ranks([1.0 if local else 0.0, -time_left_s, 1.0 if attempt_wide else 0.0])
    return stop > 0, -neg_left, wide > 0


def max_over_ranks(values: list[float]) -> list[float]:
    """Element-wise MAX of ``values`` over the default process group, in one small collective (the
    values as they are without one, or alone in it)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # the driver need not have torch
        return list(values)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":  # NCCL reduces only device tensors
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]
