"""Preemption notice: unit tests of the watcher, then real processes (driver + gloo ranks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from orchestrator.contract import ENV_NOTICE_FILE, ExitCode
from orchestrator.errors import PermanentError
from orchestrator.train.worker.preemption import PreemptionWatcher, StopRequest, stop_request, write_notice
from tests.train_units.procs import HERE, ROOT, free_port

PROC = HERE / "preempt_proc.py"


@pytest.mark.parametrize("stop,left,cost,expected", [
    (False, 0.0, 100.0, StopRequest.CONTINUE),
    (True, 25.0, None, StopRequest.CHECKPOINT_AND_STOP),      # no estimate yet: try
    (True, 25.0, 10.0, StopRequest.CHECKPOINT_AND_STOP),
    (True, 25.0, 20.0, StopRequest.CHECKPOINT_AND_STOP),      # 20 * 1.25 = 25 fits exactly
    (True, 25.0, 20.1, StopRequest.STOP_WITHOUT_CHECKPOINT),
    (True, -1.0, 0.0, StopRequest.STOP_WITHOUT_CHECKPOINT),   # deadline already passed
    (True, 0.0, None, StopRequest.STOP_WITHOUT_CHECKPOINT),
])
def test_stop_request(stop, left, cost, expected):
    assert stop_request(stop, left, cost) is expected


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_sigterm_sets_flag_and_uninstall_restores_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        w = PreemptionWatcher(25, notice_file="").install()
        assert not w.requested() and w.time_left() == float("inf")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert w.requested() and seen == []
        w.uninstall()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_deadline_counts_from_the_notice_file_mtime(tmp_path):
    clock = FakeClock(2000.0)
    path = str(tmp_path / "notice")
    w = PreemptionWatcher(25, notice_file=path, clock=clock)
    assert not w.requested()
    write_notice(path, at=1990.0)  # given 10 s before this rank looked
    assert w.requested()
    assert w.time_left() == pytest.approx(15.0)
    clock.t = 2020.0
    assert w.time_left() == pytest.approx(-5.0)


def test_notice_file_defaults_to_the_contract_env(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_NOTICE_FILE, str(tmp_path / "n"))
    w = PreemptionWatcher(5)
    assert w.notice_file == str(tmp_path / "n")
    (tmp_path / "n").touch()
    assert w.requested()


def test_install_off_the_main_thread_only_polls(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    out = {}

    def body():  # Ray Train runs the train function in a thread like this
        w = PreemptionWatcher(5, notice_file=str(tmp_path / "n")).install()
        out["requested"] = w.requested()
        (tmp_path / "n").touch()
        out["after"] = w.requested()
        w.uninstall()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert out == {"requested": False, "after": True}
    assert signal.getsignal(signal.SIGTERM) is before


def test_should_stop_without_a_process_group_is_local(tmp_path):
    w = PreemptionWatcher(5, notice_file=str(tmp_path / "n"))
    assert w.should_stop() is False
    assert w.should_stop(True) is True


def test_bad_deadline():
    with pytest.raises(PermanentError, match="preemption_deadline_s"):
        PreemptionWatcher(0)


def test_relay_clears_a_stale_notice_and_writes_on_sigterm(tmp_path):
    path = tmp_path / "notice"
    path.write_text("from an earlier attempt")
    previous = signal.getsignal(signal.SIGTERM)
    w = PreemptionWatcher(25, notice_file=str(path)).install(relay=True)
    try:
        assert not path.exists()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if path.exists():
                break
            time.sleep(0.02)
        assert path.exists()
        assert abs(path.stat().st_mtime - w.notice_time) < 1e-3
    finally:
        w.uninstall()
    assert signal.getsignal(signal.SIGTERM) is previous


# --- real processes -------------------------------------------------------------------------------

def _wait_for(paths, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if all(os.path.exists(p) for p in paths):
            return
        time.sleep(0.05)
    raise AssertionError(f"never appeared: {[p for p in paths if not os.path.exists(p)]}")


def _start_driver(tmp_path, **over):
    args = {"deadline_s": 25.0, "notice_file": str(tmp_path / "shared" / "notice"), "world_size": 2,
            "port": free_port(), "ready_file": str(tmp_path / "ready"), "out": str(tmp_path / "res"),
            "save_cost_s": 1.0}
    args.update(over)
    proc = subprocess.Popen([sys.executable, str(PROC), "driver", json.dumps(args)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return proc, args


def _results(args):
    return [json.loads(open(f"{args['out']}.rank{r}").read()) for r in range(args["world_size"])]


def _reap(proc, tmp_path):
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    ready = tmp_path / "ready"
    for pid in (ready.read_text().split() if ready.exists() else []):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sigterm_to_the_driver_stops_every_rank_after_the_same_step(tmp_path):
    proc, args = _start_driver(tmp_path)
    try:
        _wait_for([args["ready_file"]] + [f"{args['out']}.started{r}" for r in range(2)])
        proc.send_signal(signal.SIGTERM)  # what Kubernetes does to the driver's container
        assert proc.wait(timeout=60) == ExitCode.PREEMPTED
        res = _results(args)
        assert {r["decision"] for r in res} == {StopRequest.CHECKPOINT_AND_STOP.value}
        assert res[0]["step"] == res[1]["step"] >= 5
        assert all(0 < r["time_left"] <= 25.0 for r in res)
    finally:
        _reap(proc, tmp_path)


def test_notice_on_one_pod_only_stops_all_ranks(tmp_path):
    # Only rank 0's pod got the preStop notice; rank 1 learns it through the all-reduce.
    proc, args = _start_driver(tmp_path, notice_ranks=[0])
    try:
        _wait_for([f"{args['out']}.started{r}" for r in range(2)])
        write_notice(args["notice_file"])  # what the preStop hook does
        assert proc.wait(timeout=60) == ExitCode.PREEMPTED
        res = _results(args)
        assert res[0]["step"] == res[1]["step"]
        assert [r["local_notice"] for r in res] == [True, False]
        assert {r["decision"] for r in res} == {StopRequest.CHECKPOINT_AND_STOP.value}
        # The same collective carried the step's metrics: summed over ranks, the norm passed through,
        # and one least time left that every rank decided on.
        assert [(r["loss"], r["tokens"], r["grad_norm"]) for r in res] == [(1.5, 30, 3.0)] * 2
        assert res[0]["agreed_left"] == res[1]["agreed_left"] <= 25.0
    finally:
        _reap(proc, tmp_path)


def test_deadline_too_short_for_a_save_stops_without_checkpoint_on_all_ranks(tmp_path):
    proc, args = _start_driver(tmp_path, deadline_s=0.5, save_cost_s=30.0)
    try:
        _wait_for([args["ready_file"]] + [f"{args['out']}.started{r}" for r in range(2)])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == ExitCode.PREEMPTED
        res = _results(args)
        assert {r["decision"] for r in res} == {StopRequest.STOP_WITHOUT_CHECKPOINT.value}
        assert res[0]["step"] == res[1]["step"]
    finally:
        _reap(proc, tmp_path)


def test_probe_notice_and_its_sooner_deadline(tmp_path):
    clock = FakeClock(5000.0)
    answer = [None]
    w = PreemptionWatcher(25, notice_file=str(tmp_path / "n"), clock=clock, probes=[lambda: answer[0]])
    assert not w.requested()
    answer[0] = 5010.0  # e.g. Ray reports the node drains in 10 s
    assert w.requested()
    assert w.time_left() == pytest.approx(10.0)
    clock.t = 5004.0
    assert w.time_left() == pytest.approx(6.0)


def test_probe_without_deadline_uses_the_watchers_own():
    clock = FakeClock(100.0)
    w = PreemptionWatcher(25, notice_file="", clock=clock, probes=[lambda: float("inf")])
    assert w.requested() and w.time_left() == pytest.approx(25.0)
