"""`bertctl server --backend`: the Deployment's command line through the real CLI, env, bad names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.manager.conftest import make_manifest

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-" + "d" * 40


def _deployment_container() -> dict:
    doc = yaml.safe_load((ROOT / "k8s/base/deployment.yaml").read_text())
    return doc["spec"]["template"]["spec"]["containers"][0]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTCTL_")}
    # No cluster here: make sure the kubernetes client finds no configuration either.
    env.update(KUBECONFIG=str(tmp_path / "no-kubeconfig"), HOME=str(tmp_path))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.update(extra)
    return env


def bertctl(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=env["HOME"])


def test_the_deployments_command_line_is_valid(tmp_path):
    container = _deployment_container()
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN)
    # The Deployment's environment, with local stand-ins for its Secrets and volumes.
    env = _env(tmp_path, BERTCTL_DATABASE_URL="postgresql://bertctl:s3cret-pw@postgres.example:5432/bertctl",
               BERTCTL_ADMIN_TOKEN_FILE=str(token_file), BERTCTL_MANAGER_URL="http://bertctl-manager.bertctl.svc:8470",
               BERTCTL_DATA_DIR=str(tmp_path / "data"))
    assert {e["name"] for e in container["env"]} == {"BERTCTL_DATABASE_URL", "BERTCTL_ADMIN_TOKEN_FILE",
                                                       "BERTCTL_MANAGER_URL", "BERTCTL_DATA_DIR"}
    r = bertctl([*container["args"], "--check-config"], env)
    assert r.returncode == 0, r.stderr
    assert "backend=kuberay" in r.stdout and "listen=0.0.0.0:8470" in r.stdout and "database=postgresql" in r.stdout
    assert "s3cret-pw" not in r.stdout + r.stderr and ADMIN not in r.stdout + r.stderr
    assert not (tmp_path / "data").exists(), "--check-config touches nothing"


def test_backend_from_the_environment(tmp_path):
    r = bertctl(["server", "--check-config"], _env(tmp_path, BERTCTL_ADMIN_TOKEN=ADMIN, BERTCTL_BACKEND="kuberay"))
    assert r.returncode == 0 and "backend=kuberay" in r.stdout, r.stderr
    r = bertctl(["server", "--check-config"], _env(tmp_path, BERTCTL_ADMIN_TOKEN=ADMIN))
    assert r.returncode == 0 and "backend=local" in r.stdout, r.stderr


def test_an_unknown_backend_exits_2_listing_the_valid_ones(tmp_path):
    env = _env(tmp_path, BERTCTL_ADMIN_TOKEN=ADMIN)
    for extra in (["--check-config"], ["--port", "0", "--data-dir", str(tmp_path / "data")]):
        r = bertctl(["server", "--backend", "slurm", *extra], env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "unknown backend 'slurm'" in r.stderr and "'kuberay'" in r.stderr and "'local'" in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "manager.db").exists(), "a bad backend fails before the store is opened"


def test_a_kuberay_server_sends_new_jobs_to_kuberay(tmp_path):
    """A real server with --backend kuberay and no cluster: it serves, new jobs are KubeRay jobs, and
    their attempt goes to the KubeRay backend (which finds no cluster), never to a local process."""
    env = _env(tmp_path, BERTCTL_ADMIN_TOKEN=ADMIN)
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "server", "--port", "0", "--data-dir",
                             str(data), "--backend", "kuberay"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match and "backend: kuberay" in line and f"dashboard {match.group(0)}/ui" in line, line
        client = httpx.Client(base_url=match.group(0), headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert client.get("/healthz").json()["status"] == "ok"
        job = client.post("/v1/jobs", content=yaml.safe_dump(make_manifest(tmp_path))).json()
        assert job["backend"] == "kuberay"
        deadline = time.monotonic() + 30
        while not (view := client.get(f"/v1/jobs/{job['id']}").json())["attempts"]:
            assert time.monotonic() < deadline, view["phase"]
            time.sleep(0.2)
        assert view["attempts"][0]["number"] == 1
        assert not (data / "jobs" / job["id"]).exists(), "the local backend launched nothing"
    finally:
        proc.terminate()
        proc.wait(20)
