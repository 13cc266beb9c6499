"""Evaluations on the local backend: one niced process group per evaluation, apart from training.

Layout under ``data_dir/jobs/<job>/evaluations/step-<N>/``: tasks.json, token (0600, removed when
the evaluation ends), evaluation.log, pid, exit_code. The group leader is the local backend's
``local_wrapper.py`` (it records the exit code, so a restarted manager still learns it), run under
``nice -n 19`` with the thread pools capped at ``spec.evaluation.resources.cpus`` and, without
``resources.gpus``, no CUDA device: the training attempt keeps its own CPUs and GPUs first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import orchestrator
from orchestrator import contract
from orchestrator.manager.backends.processes import alive, command_line, members, signal_group, signal_pid

EVALUATE = ["-m", "orchestrator.finetune.evaluate"]
_WRAPPER = str(Path(__file__).with_name("local_wrapper.py"))  # the local backend's exit-code recorder
_REPO_ROOT = str(Path(orchestrator.__file__).resolve().parents[1])
NICENESS = "19"


@dataclass(frozen=True)
class EvaluationRequest:
    job_id: str
    evaluation_id: int
    step: int
    checkpoint_uri: str
    evaluation: dict[str, Any]      # spec.evaluation of the stored manifest (tasks, resources)
    manifest: dict[str, Any]        # the whole stored manifest: cloud credentials, image, namespace
    manager_url: str
    token: str = field(repr=False)  # secret: never logged, never in argv or a rendered object

    def argv(self, tasks_json: str) -> list[str]:
        """The evaluation's arguments (nothing secret: the token goes through the environment)."""
        resources = self.evaluation.get("resources") or {}
        return ["--job-id", self.job_id, "--evaluation-id", str(self.evaluation_id), "--checkpoint",
                self.checkpoint_uri, "--step", str(self.step), "--tasks-json", tasks_json,
                "--threads", str(max(1, int(resources.get("cpus", 1)))),
                "--device", "cuda" if resources.get("gpus") else "cpu"]


@dataclass(frozen=True)
class EvaluationStatus:
    running: bool
    exit_code: int | None = None
    message: str = ""


class LocalEvaluationLauncher:
    def __init__(self, data_dir: str | os.PathLike, command: Sequence[str] | None = None,
                 workdir: str | None = None, kill_wait_s: float = 10.0):
        self.data_dir = Path(data_dir)
        self.command = list(command or [sys.executable, *EVALUATE])
        self.workdir = workdir or os.getcwd()
        self.kill_wait_s = kill_wait_s
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def eval_dir(self, job_id: str, step: int) -> Path:
        return self.data_dir / "jobs" / job_id / "evaluations" / f"step-{step}"

    def log_path(self, job_id: str, step: int) -> str:
        return str(self.eval_dir(job_id, step) / "evaluation.log")

    def launch(self, req: EvaluationRequest) -> str:
        edir = self.eval_dir(req.job_id, req.step)
        edir.mkdir(parents=True, exist_ok=True)
        for stale in ("exit_code", "exit_code.tmp", "pid"):
            (edir / stale).unlink(missing_ok=True)
        (edir / "tasks.json").write_text(json.dumps(req.evaluation["tasks"], indent=1))
        token = edir / "token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(req.token)
        nice = shutil.which("nice")
        cmd = ([nice, "-n", NICENESS] if nice else []) + [sys.executable, _WRAPPER, str(edir / "exit_code"),
                                                          *self.command, *req.argv(f"@{edir / 'tasks.json'}")]
        with open(edir / "evaluation.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._env(req, token), cwd=self.workdir, start_new_session=True)
        with self._lock:
            self._children[proc.pid] = proc
        (edir / "pid").write_text(str(proc.pid))
        return str(proc.pid)

    def _env(self, req: EvaluationRequest, token: Path) -> dict[str, str]:
        env = contract.trainer_environ(dict(os.environ), contract.cloud_schemes(req.manifest))
        threads = str(max(1, int((req.evaluation.get("resources") or {}).get("cpus", 1))))
        env.update({contract.ENV_MANAGER_URL: req.manager_url, contract.ENV_EVALUATION_TOKEN_FILE: str(token),
                    "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"})
        if not (req.evaluation.get("resources") or {}).get("gpus"):
            env["CUDA_VISIBLE_DEVICES"] = ""  # the training attempt's GPUs stay its own
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
        return env

    def poll(self, job_id: str, step: int, handle: str) -> EvaluationStatus:
        edir = self.eval_dir(job_id, step)
        pid = int(handle) if handle.isdigit() else None
        if pid is None:
            return EvaluationStatus(False, message="no process was recorded for this evaluation")
        with self._lock:
            child = self._children.get(pid)
        if child is not None and child.poll() is None:
            return EvaluationStatus(True)
        if child is None and alive(pid) and str(edir) in command_line(pid):  # pid reuse after a restart
            return EvaluationStatus(True)
        code = _recorded(edir)
        if code is None and child is not None:
            code = child.returncode
        if code is None:
            return EvaluationStatus(False, message="the process is gone and left no exit code")
        return EvaluationStatus(False, exit_code=code)

    def terminate(self, job_id: str, step: int, handle: str, grace_s: float) -> None:
        if handle.isdigit() and members(int(handle)):
            pid = int(handle)
            signal_group(pid, signal.SIGTERM)
            if not self._wait_gone(pid, grace_s):
                for member in members(pid):
                    signal_pid(member, signal.SIGKILL)
                signal_group(pid, signal.SIGKILL)
                self._wait_gone(pid, self.kill_wait_s)
        self.cleanup(job_id, step)

    def cleanup(self, job_id: str, step: int, handle: str = "") -> None:
        """The token is worth nothing once the evaluation ended; its file goes anyway."""
        (self.eval_dir(job_id, step) / "token").unlink(missing_ok=True)

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                child = self._children.get(pid)
            if child is not None:
                child.poll()  # reap the leader: a zombie is not alive
            if not members(pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _recorded(edir: Path) -> int | None:
    try:
        text = (edir / "exit_code").read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None
