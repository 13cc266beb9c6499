"""SIGTERM to a real Ray Train v2 driver, with and without the watcher (2 TorchTrainer workers).

Without it, Ray's own SIGTERM handler (installed by ray.init) exits the driver and the worker
actors die mid-step: no worker ever learns of the notice. With it, the driver keeps running,
its relay writes the notice file, both workers stop after the same step, fit() returns and
the driver exits with ExitCode.PREEMPTED.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from orchestrator.contract import ExitCode
from orchestrator.manager.backends.processes import command_line, signal_pid
from tests.train_units.procs import HERE, ROOT

DRIVER = HERE / "ray_driver.py"
pytestmark = pytest.mark.chaos


def _kill_session(ray_tmp: str) -> None:
    """Kill only the processes of this test's Ray cluster (their command lines name ray_tmp)."""
    for proc in psutil.process_iter():
        if ray_tmp in command_line(proc.pid):
            signal_pid(proc.pid, signal.SIGKILL)


def _run_and_sigterm(mode: str, tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    out = tmp_path / mode
    out.mkdir()
    log = open(out / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, str(DRIVER), mode, str(out), ray_tmp], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.time() + 150
        while not all((out / f"alive{r}").exists() for r in range(2)):
            assert proc.poll() is None and time.time() < deadline, (out / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        time.sleep(1.0)
        steps = [int((out / f"alive{r}").read_text()) for r in range(2)]
        time.sleep(1.0)
        still_running = [int((out / f"alive{r}").read_text()) for r in range(2)] != steps
        return code, out, still_running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        _kill_session(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_with_the_watcher_every_worker_stops_after_the_same_step(tmp_path):
    code, out, still_running = _run_and_sigterm("watch", tmp_path)
    assert code == ExitCode.PREEMPTED, (out / "driver.log").read_text()[-3000:]
    assert (out / "notice").exists() and (out / "fit_returned").exists()
    res = [json.loads((out / f"stopped{r}").read_text()) for r in range(2)]
    assert res[0] == res[1] and res[0]["decision"] == "checkpoint_and_stop"
    assert not still_running


def test_without_it_ray_kills_the_workers_before_they_hear_of_it(tmp_path):
    code, out, still_running = _run_and_sigterm("plain", tmp_path)
    assert code != ExitCode.PREEMPTED
    assert not (out / "fit_returned").exists()
    assert not any((out / f"stopped{r}").exists() for r in range(2))  # no chance to checkpoint
    assert not still_running  # the actors died with the driver
