"""The local backend: each attempt is its own process group on this machine.

Layout under ``data_dir/jobs/<job>/attempt-<n>/``: manifest.yaml, trainer.log, pid, exit_code.
The group leader is ``local_wrapper.py``, which runs the trainer and writes its exit code, so
a manager that restarted (and is no longer the parent) can still tell how an attempt ended.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import yaml

import orchestrator
from orchestrator import contract
from orchestrator.errors import TemporaryError
from orchestrator.manager.backends.base import AttemptStatus, LaunchRequest, RunState, register
from orchestrator.manager.backends.local_ray import LocalRayCluster
from orchestrator.manager.backends.processes import alive as _alive
from orchestrator.manager.backends.processes import command_line
from orchestrator.manager.backends.processes import members as _members
from orchestrator.manager.backends.processes import signal_group as _signal_group
from orchestrator.manager.backends.processes import signal_pid as _signal_pid
from orchestrator.manager.backends.processes import with_title_and_env
from orchestrator.spec import ResourcesSpec

log = logging.getLogger("bertctl.manager.local")
_WRAPPER = str(Path(__file__).with_name("local_wrapper.py"))
_REPO_ROOT = str(Path(orchestrator.__file__).resolve().parents[1])
# A running Ray cluster that attempts join instead of the warm head, named by its state directory
# (cluster.json: pid, port; auth_token): a simulated spot cluster (`bertctl spot up`, docs/spot.md).
ENV_RAY_CLUSTER_DIR = "BERTCTL_RAY_CLUSTER_DIR"


class LocalBackend:
    name = "local"

    def __init__(self, data_dir: str | os.PathLike, trainer_command: Sequence[str] | None = None,
                 workdir: str | None = None, kill_wait_s: float = 30.0, ray_cluster: LocalRayCluster | None = None,
                 ray_cluster_dir: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir)
        self.ray_cluster = ray_cluster  # None: every attempt starts a Ray cluster of its own
        cluster_dir = ray_cluster_dir or os.environ.get(ENV_RAY_CLUSTER_DIR)
        self.ray_cluster_dir = Path(cluster_dir) if cluster_dir else None  # set: attempts join it, never started here
        self.trainer_command = list(trainer_command or [sys.executable, "-m", "orchestrator.train"])
        self.workdir = workdir or os.getcwd()
        self.kill_wait_s = kill_wait_s
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- paths ----------------------------------------------------------------------------------

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.data_dir / "jobs" / job_id / f"attempt-{attempt}"

    def log_path(self, job_id: str, attempt: int, handle: str = "") -> str | None:
        return str(self.attempt_dir(job_id, attempt) / "trainer.log")

    # -- Backend protocol -------------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        adir = self.attempt_dir(request.job_id, request.attempt)
        adir.mkdir(parents=True, exist_ok=True)
        for stale in ("exit_code", "exit_code.tmp", "pid"):
            (adir / stale).unlink(missing_ok=True)
        manifest = adir / "manifest.yaml"
        manifest.write_text(yaml.safe_dump(request.manifest, sort_keys=False))
        cmd = [sys.executable, _WRAPPER, str(adir / "exit_code"), *self.trainer_command, "--manifest", str(manifest)]
        env = self._env(request) | self._ray_env(request)
        with open(adir / "trainer.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=self.workdir, start_new_session=True)
        with self._lock:
            self._children[proc.pid] = proc
        (adir / "pid").write_text(str(proc.pid))
        return str(proc.pid)

    def poll(self, job_id: str, attempt: int, handle: str) -> AttemptStatus:
        status = self._poll_session(job_id, attempt, handle)
        if status.state is RunState.RUNNING or not self._shared_ray():
            return status
        # On the warm head the attempt's Ray workers are not in its session; Ray ends them once it
        # sees the driver gone. Until they are, the attempt has not ended (no second attempt beside
        # them); they can do nothing useful without their driver, so they are killed.
        leftovers = train_workers(job_id, attempt)
        if not leftovers:
            return status
        for pid in leftovers:
            _signal_pid(pid, signal.SIGKILL)
        return AttemptStatus(RunState.RUNNING, message="waiting for the attempt's Ray workers to exit")

    def _poll_session(self, job_id: str, attempt: int, handle: str) -> AttemptStatus:
        adir = self.attempt_dir(job_id, attempt)
        pid = self._pid(adir, handle)
        if pid is None:
            return AttemptStatus(RunState.GONE, message="no process was recorded for this attempt")
        child = self._child(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return AttemptStatus(RunState.RUNNING)
            return AttemptStatus(RunState.EXITED, exit_code=_recorded(adir) or _shell_code(code))
        if _alive(pid) and _is_ours(pid, adir):
            return AttemptStatus(RunState.RUNNING)
        code = _recorded(adir)
        if code is not None:
            return AttemptStatus(RunState.EXITED, exit_code=code)
        return AttemptStatus(RunState.GONE, message="the process is gone and left no exit code "
                                                    "(killed while the manager was down?)")

    def terminate(self, job_id: str, attempt: int, handle: str, grace_s: float) -> None:
        """SIGTERM the group (the trainer checkpoints and stops its Ray workers), wait grace_s, then
        SIGKILL every process of the attempt's session: Ray workers have process groups of their
        own but stay in the session the wrapper started, so the session is the attempt (fencing)."""
        pid = self._pid(self.attempt_dir(job_id, attempt), handle)
        if pid is not None and self._group_alive(pid):
            self._stop_session(job_id, attempt, pid, grace_s)
        if self._shared_ray():  # its workers on the warm head (or the joined cluster), outside the session
            self._kill_ray_workers(job_id, attempt)

    def _stop_session(self, job_id: str, attempt: int, pid: int, grace_s: float) -> None:
        _signal_group(pid, signal.SIGTERM)
        if self._wait_gone(pid, grace_s):
            return
        for member in _members(pid):
            _signal_pid(member, signal.SIGKILL)
        _signal_group(pid, signal.SIGKILL)
        if not self._wait_gone(pid, self.kill_wait_s):
            raise TemporaryError(f"processes of {job_id} attempt {attempt} (session {pid}) survived SIGKILL", 5.0)

    def _kill_ray_workers(self, job_id: str, attempt: int) -> None:
        deadline = time.monotonic() + self.kill_wait_s
        while leftovers := train_workers(job_id, attempt):
            if time.monotonic() >= deadline:
                raise TemporaryError(f"Ray workers {leftovers} of {job_id} attempt {attempt} survived SIGKILL", 5.0)
            for member in leftovers:
                _signal_pid(member, signal.SIGKILL)
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the warm Ray head (attempts still running lose their cluster: stop them first)."""
        if self.ray_cluster is not None:
            self.ray_cluster.stop()

    # -- helpers --------------------------------------------------------------------------------

    def _shared_ray(self) -> bool:
        return self.ray_cluster is not None or self.ray_cluster_dir is not None

    def _ray_env(self, request: LaunchRequest) -> dict[str, str]:
        """The named cluster's address; else the warm head's when it has room for the job; else the
        attempt starts its own cluster."""
        if self.ray_cluster_dir is not None:
            return joined_cluster_env(self.ray_cluster_dir)
        if self.ray_cluster is None or not self.ray_cluster.fits(logical_cpus(request.manifest)):
            return {}
        try:
            return self.ray_cluster.attempt_env()
        except TemporaryError as exc:  # never hold a job back for the warm head: the slower path works
            log.warning("attempt %d of %s starts its own Ray cluster: %s", request.attempt, request.job_id, exc)
            return {}

    def _env(self, request: LaunchRequest) -> dict[str, str]:
        # An allowlist (contract.trainer_environ): none of the manager's own secrets, and cloud
        # credentials only for a job whose storage is on that cloud.
        env = contract.trainer_environ(dict(os.environ), contract.cloud_schemes(request.manifest))
        env.update({contract.ENV_JOB_ID: request.job_id, contract.ENV_ATTEMPT: str(request.attempt),
                    contract.ENV_MANAGER_URL: request.manager_url,
                    contract.ENV_ATTEMPT_TOKEN: request.attempt_token})
        if request.mtbp_s is not None:
            env[contract.ENV_MTBP_S] = f"{request.mtbp_s:.3f}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
        return env

    @staticmethod
    def _pid(adir: Path, handle: str) -> int | None:
        text = handle or _read(adir / "pid")
        return int(text) if text and text.strip().isdigit() else None

    def _child(self, pid: int) -> subprocess.Popen | None:
        with self._lock:
            return self._children.get(pid)

    def _group_alive(self, pgid: int) -> bool:
        child = self._child(pgid)
        if child is not None:
            child.poll()  # reap the leader so a zombie does not count as alive
        return bool(_members(pgid))

    def _wait_gone(self, pgid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._group_alive(pgid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def joined_cluster_env(cluster_dir: Path) -> dict[str, str]:
    """Address and token file of the running cluster in ``cluster_dir``; TemporaryError (the launch
    is retried) while it is not up: the attempt must not quietly train somewhere else."""
    try:
        port = int(json.loads((cluster_dir / "cluster.json").read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TemporaryError(f"no Ray cluster is running in {cluster_dir} (start it with "
                             f"`bertctl spot up --state-dir {cluster_dir}`)", 10.0) from None
    return {contract.ENV_RAY_ADDRESS: f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(cluster_dir / "auth_token")}


def _recorded(adir: Path) -> int | None:
    text = _read(adir / "exit_code")
    return int(text) if text and text.strip().lstrip("-").isdigit() else None


def _shell_code(code: int) -> int:
    return 128 - code if code < 0 else code


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _is_ours(pid: int, adir: Path) -> bool:
    # Guards against pid reuse after a restart: the wrapper's argv names this attempt's directory.
    return str(adir) in command_line(pid)


def logical_cpus(manifest: dict) -> float:
    """Logical CPUs an attempt asks Ray for: every worker at its maximum count, plus the controller."""
    resources = (manifest.get("spec") or {}).get("resources") or {}
    return ResourcesSpec.model_validate(resources).workers_cpus() + 1.0


# Ray sets an actor's process title to ``ray::<Class>[.<method>]``.
_TRAIN_WORKER_TITLE = "ray::RayTrainWorker"


def train_workers(job_id: str, attempt: int) -> list[int]:
    """Live Ray Train workers of this job and attempt on the warm head, found by the variables the
    driver hands them through the job's runtime environment.

    Only the training workers: they are what can still heartbeat or commit a checkpoint. A detached
    actor that the attempt's job happened to create first (Ray Train's cluster-wide autoscaling
    coordinator) carries the same variables but belongs to the head, and Ray restarts it whenever
    it is killed: matching it kept an ended attempt "running" until its heartbeat timed out.
    """
    return with_title_and_env(_TRAIN_WORKER_TITLE, {contract.ENV_JOB_ID: job_id, contract.ENV_ATTEMPT: str(attempt)})


register("local", LocalBackend)
