"""A manager as its own process (`python -m orchestrator.cli server`), for kill -9 tests, and
which processes of an attempt are still alive."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ADMIN = "admin-" + "e" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen | None, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: a server process that is running stops either way."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            kill9(proc)


class ServerProcess:
    def __init__(self, data_dir: Path, port: int, trainer_command: list[str] | None = None,
                 extra_env: dict[str, str] | None = None):
        self.data_dir, self.port, self.trainer_command = data_dir, port, trainer_command
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)

    def start(self) -> "ServerProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTCTL_")}
        env.update({"BERTCTL_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                    **self.extra_env})
        if self.trainer_command:
            env["BERTCTL_TRAINER_COMMAND"] = shlex.join(self.trainer_command)
        log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "server", "--port", str(self.port),
                                      "--data-dir", str(self.data_dir)], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"manager did not start; see {log.name}")

    def kill9(self) -> None:
        kill9(self.proc)

    def stop(self) -> None:
        stop(self.proc)
        self.http.close()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str) -> list[dict]:
        return self.http.get(f"/v1/jobs/{job_id}/events").json()["events"]

    def wait(self, job_id: str, until, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out in {job['phase']} at step {job['step']}: "
                                     f"{[e['message'] for e in self.events(job_id)]}")
            time.sleep(0.5)


def terminal(job: dict) -> bool:
    return job["phase"] in ("SUCCEEDED", "FAILED", "CANCELLED")


def group_members(leader: int) -> list[int]:
    """Live processes in the leader's process group or session (zombies count as gone, as in the
    backend's fencing). Written apart from the backend's own helpers (backends/processes.py) on
    purpose: a fencing test must not trust the code it checks."""
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        try:
            if leader in (os.getpgid(proc.pid), os.getsid(proc.pid)):
                found.append(proc.pid)
        except ProcessLookupError:  # gone meanwhile
            continue
    return found


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))
