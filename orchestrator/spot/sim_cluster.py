"""A simulated spot cluster on this machine: an on-demand head and worker groups that Ray's own
autoscaler scales over its fake multi-node provider (``provider.py``).

``ray start --head --block --autoscaling-config=<rendered config>`` runs in a session of its own
with ``RAY_FAKE_CLUSTER=1``; the autoscaler (Ray's monitor process, in that session) starts every
worker node as a real raylet in the same session. So the session is the cluster: ``down`` ends
exactly its members and nothing else on the machine (never ``ray stop``, which ends every Ray
process here, other people's included).

The state directory holds what another process needs to use the cluster: ``cluster.json`` (pid,
port), ``auth_token`` (0600; the cluster uses Ray's token auth), ``capacity.json`` and
``events.jsonl`` (``provider.py``). The local backend joins such a cluster when the manager is
given its directory (``BERTCTL_RAY_CLUSTER_DIR``); attempts then run on its nodes.
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
from typing import Any

import psutil
import yaml

import orchestrator
from orchestrator.errors import PermanentError, TemporaryError
from orchestrator.loopback import free_port, port_open
from orchestrator.spot.config import MARKET_TYPE_LABEL, NODE_GROUP_LABEL, SimClusterConfig, autoscaler_config
from orchestrator.spot.pool import EVENTS_FILE, write_capacity

_READY_LINE = "Ray runtime started"
_REPO_ROOT = str(Path(orchestrator.__file__).resolve().parents[1])
_DEAD = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
STATE_FILE = "cluster.json"


class SimCluster:
    def __init__(self, state_dir: str | os.PathLike, config: SimClusterConfig | None = None,
                 start_timeout_s: float = 120.0):
        self.state_dir = Path(state_dir).resolve()
        self.config = config
        self.start_timeout_s = start_timeout_s

    # -- where it is -----------------------------------------------------------------------------

    @property
    def token_file(self) -> Path:
        return self.state_dir / "auth_token"

    def state(self) -> dict[str, Any] | None:
        """``{"pid", "port"}`` of the running head, or None when it is not up."""
        try:
            state = json.loads((self.state_dir / STATE_FILE).read_text())
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return {"pid": pid, "port": port} if _alive(pid) and port_open(port) else None

    @property
    def address(self) -> str:
        state = self.state()
        if state is None:
            raise PermanentError(f"no simulated spot cluster is running in {self.state_dir}: "
                                 "start one with `bertctl spot up --config FILE`")
        return f"127.0.0.1:{state['port']}"

    def client_environ(self) -> dict[str, str]:
        """What a process needs in its environment to talk to the cluster (the token by file)."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    # -- up and down -----------------------------------------------------------------------------

    def up(self) -> dict[str, Any]:
        """Start the head and its autoscaler; returns the state once Ray says it runs."""
        if self.config is None:
            raise PermanentError("a cluster config is needed to start a simulated spot cluster")
        if self.state() is not None:
            raise PermanentError(f"a simulated spot cluster already runs in {self.state_dir} "
                                 "(`bertctl spot down` first, or use another --state-dir)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_token()
        (self.state_dir / EVENTS_FILE).unlink(missing_ok=True)
        write_capacity(self.state_dir, {n: t.max_workers for n, t in self.config.node_types.items()})
        port = free_port()
        config_path = self.state_dir / "autoscaler.yaml"
        config_path.write_text(yaml.safe_dump(autoscaler_config(self.config, f"127.0.0.1:{port}", self.state_dir)))
        proc = self._start_head(port, config_path)
        state = {"pid": proc.pid, "port": port}
        self._wait_ready(proc, state)
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_dir / STATE_FILE)
        return state

    def down(self, grace_s: float = 3.0) -> None:
        """End every process of the cluster's session (head, autoscaler, worker nodes, their workers)."""
        leader = _recorded_pid(self.state_dir)
        # The recorded pid may have been reused since: only a head started with this state's config is ours.
        if leader is not None and str(self.state_dir / "autoscaler.yaml") in _command_line(leader):
            _stop_session(leader, grace_s)
            _forget_default_address(_recorded_port(self.state_dir))
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    def _start_head(self, port: int, config_path: Path) -> subprocess.Popen:
        head = dict(self.config.head.resources)
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
               f"--autoscaling-config={config_path}", f"--num-cpus={int(head.pop('CPU', 0))}",
               f"--num-gpus={int(head.pop('GPU', 0))}",
               f"--labels={MARKET_TYPE_LABEL}=on-demand,{NODE_GROUP_LABEL}=head"]
        if "memory" in head:
            cmd.append(f"--memory={int(head.pop('memory'))}")
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        with open(self.state_dir / "head.log", "ab") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._head_environ(), cwd=self.state_dir, start_new_session=True)

    def _head_environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
        env.update(RAY_FAKE_CLUSTER="1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file),
                   RAY_USAGE_STATS_ENABLED="0", AUTOSCALER_UPDATE_INTERVAL_S=f"{self.config.update_interval_s:g}",
                   RAY_health_check_period_ms=str(int(self.config.health_check_period_s * 1000)),
                   RAY_health_check_failure_threshold=str(self.config.health_check_failures),
                   # The head is on demand: on `down` it need not drain first (Ray's default waits 30 s).
                   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
                   # The autoscaler imports the provider from this package.
                   PYTHONPATH=os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH")) if p))
        return env

    def _write_token(self) -> None:
        if not self.token_file.exists():
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))

    def _wait_ready(self, proc: subprocess.Popen, state: dict[str, Any]) -> None:
        log_path = self.state_dir / "head.log"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if port_open(state["port"]) and _READY_LINE in log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        tail = log_path.read_text(errors="replace")[-1500:]
        _stop_session(proc.pid, 5.0)  # whatever of it did start (the leader may be gone already)
        raise TemporaryError(f"the simulated spot cluster's head did not start within "
                             f"{self.start_timeout_s:.0f} s (log {log_path}): {tail}", delay_s=10.0)

    # -- what runs -------------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """The provider's launch and removal records, oldest first."""
        try:
            lines = (self.state_dir / EVENTS_FILE).read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def node_processes(self, node_id: str) -> list[int]:
        """Live processes of one worker node (its raylet, agents and Ray workers): they carry the
        node id the provider gave them in their environment."""
        leader = _recorded_pid(self.state_dir)
        return [] if leader is None else _with_env(leader, "RAY_OVERRIDE_NODE_ID_FOR_TESTING", node_id)


def _forget_default_address(port: int | None) -> None:
    """`ray start --head` records its address as this machine's default cluster, and only `ray stop`
    (never run here) removes it. Left behind, it makes a later plain `ray.init()` try to join the
    cluster that is gone, so the record goes with the cluster (only when it names this cluster)."""
    from ray._private.utils import get_ray_address_file, read_ray_address

    recorded = read_ray_address()
    if port is not None and recorded and recorded.rsplit(":", 1)[-1] == str(port):
        Path(get_ray_address_file(None)).unlink(missing_ok=True)


def _recorded_port(state_dir: Path) -> int | None:
    try:
        return int(json.loads((state_dir / STATE_FILE).read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _recorded_pid(state_dir: Path) -> int | None:
    try:
        return int(json.loads((state_dir / STATE_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None



def _command_line(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in _DEAD
    except psutil.Error:
        return False


def session_members(leader: int) -> list[psutil.Process]:
    """Live processes in the leader's session (the cluster's processes)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() not in _DEAD and os.getsid(proc.pid) == leader:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _with_env(leader: int, name: str, value: str) -> list[int]:
    found = []
    for proc in session_members(leader):
        try:
            if proc.environ().get(name) == value:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _stop_session(leader: int, grace_s: float) -> None:
    _signal_session(leader, signal.SIGTERM, grace_s)
    _signal_session(leader, signal.SIGKILL, 10.0)


def _signal_session(leader: int, sig: int, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while members := session_members(leader):
        for proc in members:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)
