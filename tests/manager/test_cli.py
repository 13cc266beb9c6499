"""`bertctl` job commands as a user runs them (subprocesses) against a real manager."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from orchestrator.manager.server import Manager, ManagerConfig, ServerThread

from tests.manager.conftest import FAKE_TRAINER, make_manifest

ADMIN = "admin-" + "c" * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    manager = Manager(ManagerConfig(port=0, data_dir=tmp, admin_token=ADMIN, trainer_command=FAKE_TRAINER,
                                    interval_s=0.2, cancel_grace_s=5.0))
    thread = ServerThread(manager).start()
    yield manager
    for job in manager.store.list_jobs():
        manager.store.request_cancel(job["id"], time.time())
    deadline = time.time() + 20
    while manager.store.active_jobs() and time.time() < deadline:
        time.sleep(0.2)
    thread.stop()


def bertctl(*args, url=None, token=ADMIN, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTCTL_")}
    if url:
        env["BERTCTL_URL"] = url
    if token:
        env["BERTCTL_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_status_follow_events_logs(server, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(make_manifest(tmp_path, name="cli-job", max_steps=10)))
    r = bertctl("submit", str(path), "--id", "cli-1", url=server.url)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split()[-1]
    again = bertctl("submit", str(path), "--id", "cli-1", url=server.url)
    assert again.returncode == 0 and "already submitted" in again.stdout and job_id in again.stdout
    follow = bertctl("status", job_id, "--follow", url=server.url)
    assert follow.returncode == 0, follow.stderr
    assert "SUCCEEDED" in follow.stdout and "10/10" in follow.stdout
    listed = bertctl("list", url=server.url)
    assert job_id in listed.stdout
    ev = bertctl("events", job_id, url=server.url)
    assert "submitted" in ev.stdout and "succeeded" in ev.stdout
    logs = bertctl("logs", job_id, "-f", url=server.url)
    assert logs.returncode == 0 and "step 10" in logs.stdout and "==> attempt 1 <==" in logs.stdout


def test_cancel(server, tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(make_manifest(tmp_path, name="long", max_steps=10_000)))
    job_id = bertctl("submit", str(path), url=server.url).stdout.split()[-1]
    r = bertctl("cancel", job_id, url=server.url)
    assert r.returncode == 0 and job_id in r.stdout
    follow = bertctl("status", job_id, "-f", url=server.url)
    assert follow.returncode == 1 and "CANCELLED" in follow.stdout


def test_bad_manifest_lists_fields_and_exits_2(server, tmp_path):
    m = make_manifest(tmp_path)
    m["spec"]["training"]["lr"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(m))
    r = bertctl("submit", str(path), url=server.url)
    assert r.returncode == 2 and "spec.training.lr" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["unreachable", "bad-token", "no-token", "unknown-job"])
def test_errors_are_one_line_exit_2(server, case):
    url = "http://127.0.0.1:9" if case == "unreachable" else server.url
    token = {"bad-token": "nope-" + "x" * 30, "no-token": None}.get(case, ADMIN)
    r = bertctl("status", "no-such-job" if case == "unknown-job" else "x", url=url, token=token)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    if token and case == "bad-token":
        assert token not in r.stderr


def test_server_without_token_or_database_is_one_line_exit_2(tmp_path):
    r = bertctl("server", "--port", "0", "--data-dir", str(tmp_path), token=None)
    assert r.returncode == 2 and "BERTCTL_ADMIN_TOKEN" in r.stderr and "Traceback" not in r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTCTL_")}
    env["BERTCTL_ADMIN_TOKEN"] = ADMIN
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "server", "--port", "0", "--data-dir",
                        str(tmp_path), "--database-url", "postgresql://postgres:hunter2@127.0.0.1:1/x"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot open the database" in r.stderr
    assert "hunter2" not in r.stderr and "Traceback" not in r.stderr
