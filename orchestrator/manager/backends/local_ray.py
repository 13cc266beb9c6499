"""A warm local Ray cluster shared by the local backend's attempts.

Starting a Ray head (GCS, raylet, agents, pre-started workers) costs several seconds of CPU, and
on a small machine that lands inside every recovery: kill -> new attempt -> first resumed step.
The local backend therefore keeps one head running (``ray start --head --block`` in a session of
its own) and points each attempt's driver at it. What still starts per attempt is the driver, the
Ray Train controller and the worker group: Ray kills a job's actors when its driver dies, so
killing an attempt's session still ends its workers, and a stale attempt that lingers for a
moment cannot commit (checkpoint fencing) or report (heartbeat fencing).

The manager itself never imports Ray: the head runs as a subprocess, and its state
(``cluster.json``: pid and port) lets a restarted manager adopt it instead of starting another.
Attempts that need more logical CPUs than the warm head has get a cluster of their own.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator import contract
from orchestrator.errors import TemporaryError
from orchestrator.loopback import free_port, port_open
from orchestrator.manager.backends.processes import alive as _alive
from orchestrator.manager.backends.processes import command_line, members, signal_group, signal_pid

DEFAULT_LOGICAL_CPUS = 32  # a scheduling budget, not cores: room for a few concurrent small jobs
_READY_LINE = "Ray runtime started"



class LocalRayCluster:
    def __init__(self, root: str | os.PathLike, logical_cpus: int = DEFAULT_LOGICAL_CPUS,
                 start_timeout_s: float = 120.0):
        self.root = Path(root)
        self.logical_cpus = logical_cpus
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._state: dict | None = None

    @property
    def token_file(self) -> Path:
        return self.root / "auth_token"

    def fits(self, logical_cpus_needed: float) -> bool:
        return logical_cpus_needed <= self.logical_cpus

    def attempt_env(self) -> dict[str, str]:
        """Environment for an attempt's driver: the head's address and its token file (never the token)."""
        state = self.ensure()
        return {contract.ENV_RAY_ADDRESS: f"127.0.0.1:{state['port']}", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def ensure(self) -> dict:
        """The running head (adopted or started); TemporaryError when it does not come up."""
        if self._state and self._healthy(self._state):
            return self._state
        adopted = self._read_state()
        if adopted and self._healthy(adopted):
            self._state = adopted
            return adopted
        self.stop()
        self._state = self._start()
        return self._state

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the head's session (GCS, raylet, agents); SIGKILL what is left after grace_s."""
        state = self._state or self._read_state()
        self._state = None
        if state and members(state["pid"]):
            # Every member, not just the group: Ray workers have process groups of their own.
            _signal_members(state["pid"], signal.SIGTERM, grace_s, settled=_only_control_plane_left)
            _signal_members(state["pid"], signal.SIGKILL, 10.0)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
        (self.root / "cluster.json").unlink(missing_ok=True)

    # -- helpers --------------------------------------------------------------------------------

    def _healthy(self, state: dict) -> bool:
        return _alive(state["pid"]) and port_open(state["port"])

    def _read_state(self) -> dict | None:
        try:
            state = json.loads((self.root / "cluster.json").read_text())
            return {"pid": int(state["pid"]), "port": int(state["port"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_token(self) -> None:
        if not self.token_file.exists():
            self.token_file.touch(mode=0o600)
            self.token_file.write_text(secrets.token_hex(32))

    def _start(self) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_token()
        port = free_port()
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", f"--num-cpus={self.logical_cpus}", "--include-dashboard=false",
               "--disable-usage-stats"]
        env = head_environ(dict(os.environ))
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file), RAY_USAGE_STATS_ENABLED="0")
        log_path = self.root / "ray-head.log"
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, start_new_session=True)
        state = {"pid": self._proc.pid, "port": port}
        self._wait_ready(state, log_path)
        tmp = self.root / "cluster.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.root / "cluster.json")
        return state

    def _wait_ready(self, state: dict, log_path: Path) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            if port_open(state["port"]) and _READY_LINE in log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        tail = log_path.read_text(errors="replace")[-1500:]
        self.stop()
        raise TemporaryError(f"the local Ray head did not start within {self.start_timeout_s:.0f} s "
                             f"(log {log_path}): {tail}", delay_s=10.0)


def head_environ(source: dict[str, str]) -> dict[str, str]:
    """The head's environment, which every Ray worker on it inherits: the trainer allowlist
    (contract.trainer_environ), no attempt's variables (each job brings its own by runtime_env), and
    the cloud storage variables, since the head is shared by jobs on S3 and GCS. The manager's own
    secrets (admin token, database URL, kubeconfig, PG*) never reach it."""
    return contract.trainer_environ(source, clouds=frozenset({"s3", "gs"}))


def _signal_members(leader: int, sig: int, wait_s: float, settled=lambda pids: not pids) -> None:
    """Signal every live process of the leader's group or session; wait up to wait_s for none
    left, or for what is left to be ``settled``."""
    signal_group(leader, sig)
    deadline = time.monotonic() + wait_s
    while not settled(pids := members(leader)):
        for pid in pids:
            signal_pid(pid, sig)
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


# After SIGTERM the head's workers and agents (titled "ray::...") end within a fraction of a
# second; the raylet, the GCS, the autoscaler monitor and the `ray start --block` process take
# 10-20 s more (Ray 2.60), each waiting on its own graceful shutdown. A local head keeps nothing
# worth that wait (the GCS holds its state in memory, and no attempt runs on a head being stopped),
# so once no worker is left the rest is SIGKILLed: stopping a manager, or replacing a dead head,
# took 15 s longer than it needed.
_WORKER_TITLE = "ray::"


def _only_control_plane_left(pids: list[int]) -> bool:
    """No Ray worker or agent among ``pids`` (what is left may be SIGKILLed)."""
    return not any(command_line(pid).startswith(_WORKER_TITLE) for pid in pids)
