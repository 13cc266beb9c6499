"""The warm local Ray head: started once (a real `ray start --head --block`), adopted by a restarted
manager instead of started twice, reachable with its token file only, free of the manager's
credentials, and gone with every process of its session after stop()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator import contract
from orchestrator.manager.backends.local import LocalBackend, logical_cpus, train_workers
from orchestrator.manager.backends.local_ray import LocalRayCluster
from orchestrator.manager.backends.processes import alive, members

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def head(tmp_path, monkeypatch):
    for name in ("BERTCTL_ADMIN_TOKEN", "BERTCTL_DATABASE_URL", "PGPASSWORD", "KUBECONFIG", "SECRET_X"):
        monkeypatch.setenv(name, "manager-secret-never-in-the-head")
    cluster = LocalRayCluster(tmp_path / "ray", logical_cpus=8)
    try:
        yield cluster
    finally:
        cluster.stop()


def _environ(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


def test_start_adopt_and_stop(head, tmp_path):
    env = head.attempt_env()
    state = json.loads((tmp_path / "ray" / "cluster.json").read_text())
    assert env[contract.ENV_RAY_ADDRESS] == f"127.0.0.1:{state['port']}"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(head.token_file) and "RAY_AUTH_TOKEN" not in env
    assert oct(head.token_file.stat().st_mode & 0o777) == "0o600"
    head_env = _environ(state["pid"])  # what every Ray worker on the head inherits
    assert "manager-secret-never-in-the-head" not in "".join(head_env.values()), sorted(head_env)
    assert head_env["PATH"] == os.environ["PATH"]

    adopted = LocalRayCluster(tmp_path / "ray", logical_cpus=8)  # a restarted manager
    assert adopted.attempt_env() == env, "a running head is adopted, not started twice"
    pids = members(state["pid"])
    assert len(pids) >= 3  # the `ray start` process, GCS and raylet at least

    adopted.stop()
    assert not members(state["pid"])
    assert not [p for p in pids if _alive_cmd(p)], "a Ray process of the head survived stop()"
    assert not (tmp_path / "ray" / "cluster.json").exists()


def _alive_cmd(pid: int) -> bool:
    try:
        return "ray" in "\0".join(psutil.Process(pid).cmdline())
    except psutil.Error:  # gone, or a zombie (no command line any more)
        return False


def test_a_dead_head_is_replaced(head, tmp_path):
    first = json.loads(json.dumps(head.ensure()))
    head.stop()
    second = head.ensure()
    assert second["pid"] != first["pid"] and members(second["pid"])


def test_jobs_larger_than_the_head_get_their_own_cluster(tmp_path):
    cluster = LocalRayCluster(tmp_path / "ray", logical_cpus=8)
    small = {"spec": {"resources": {"workers": 2, "cpus_per_worker": 1}}}
    big = {"spec": {"resources": {"workers": {"min": 2, "max": 8}, "cpus_per_worker": 2}}}
    assert cluster.fits(logical_cpus(small)) and logical_cpus(small) == 3.0
    assert not cluster.fits(logical_cpus(big)) and logical_cpus(big) == 17.0


def test_only_the_attempts_train_workers_are_fenced_not_a_detached_actor_it_created(head, tmp_path):
    """A detached actor created by the attempt's job carries its variables but belongs to the head,
    and Ray restarts it when killed: the attempt has ended once its train workers are gone."""
    env = {**os.environ, **head.attempt_env(), contract.ENV_JOB_ID: "fence-job", contract.ENV_ATTEMPT: "1",
           "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen([sys.executable, str(ROOT / "tests/manager/attempt_actors.py")], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pids = _first_json_line(driver)
        assert train_workers("fence-job", 1) == [pids["worker"]]
        assert train_workers("fence-job", 2) == [] and train_workers("other-job", 1) == []
        backend = LocalBackend(tmp_path / "data", ray_cluster=head, kill_wait_s=10)
        backend.terminate("fence-job", 1, "", 0.0)  # no session recorded: only its Ray workers to stop
        assert not alive(pids["worker"]) and train_workers("fence-job", 1) == []
        time.sleep(1.0)
        assert alive(pids["coordinator"]), "the detached actor is the head's, not the attempt's"
    finally:
        driver.stdin.close()
        driver.wait(30)


def _first_json_line(proc: subprocess.Popen) -> dict:
    for line in proc.stdout:  # Ray may print to stdout first
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"the driver ended (code {proc.wait()}) before it printed its actors")
