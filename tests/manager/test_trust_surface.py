"""A smaller trust surface: what of the manager's environment reaches a trainer (an allowlist,
contract.trainer_environ), what reaches Ray's runtime_env, and revoked attempt tokens."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from orchestrator import contract
from orchestrator.manager.backends.base import LaunchRequest, RunState
from orchestrator.manager.backends.local import LocalBackend
from orchestrator.manager.backends.local_ray import head_environ
from tests.manager.conftest import make_manifest

HERE = Path(__file__).resolve().parent
# The manager's own secrets, and one nobody has thought of yet: none may reach a trainer.
MANAGER_SECRETS = {"PGPASSWORD": "pg-secret-1", "KUBECONFIG": "/home/op/.kube/secret-config",
                   "BERTCTL_ADMIN_TOKEN": "admin-secret-" + "a" * 20, "BERTCTL_ADMIN_TOKEN_FILE": "/run/admin",
                   "BERTCTL_DATABASE_URL": "postgresql://u:db-secret@h/db", "BERTCTL_TOKEN": "cli-secret",
                   "SECRET_X": "made-up-secret"}
AWS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "aws-secret", "AWS_SESSION_TOKEN": "aws-sess",
       "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
GCP = {"GOOGLE_APPLICATION_CREDENTIALS": "/var/secrets/gcp.json"}


@pytest.fixture
def manager_env(monkeypatch):
    for name, value in {**MANAGER_SECRETS, **AWS, **GCP, "TOKENIZERS_PARALLELISM": "false",
                        contract.ENV_S3_RETRY_BUDGET_S: "7"}.items():
        monkeypatch.setenv(name, value)


def _launch_and_read_env(tmp_path: Path, manifest: dict) -> dict[str, str]:
    backend = LocalBackend(tmp_path / "data", trainer_command=[sys.executable, str(HERE / "env_dump_trainer.py")])
    request = LaunchRequest("job-env", 1, manifest, "http://127.0.0.1:1", "attempt-token-" + "t" * 20, mtbp_s=60.0)
    handle = backend.launch(request)
    while (status := backend.poll("job-env", 1, handle)).state is RunState.RUNNING:
        time.sleep(0.05)
    assert status.exit_code == 0, (backend.attempt_dir("job-env", 1) / "trainer.log").read_text()
    return json.loads((backend.attempt_dir("job-env", 1) / "trainer-env.json").read_text())


def _assert_no_manager_secret(env: dict[str, str]) -> None:
    leaked = sorted(k for k in MANAGER_SECRETS if k in env)
    assert not leaked, f"manager secrets reached the trainer: {leaked}"
    values = "\n".join(env.values())
    assert not [v for v in MANAGER_SECRETS.values() if v in values]


def test_local_trainer_gets_the_contract_and_no_manager_secret(tmp_path, manager_env):
    env = _launch_and_read_env(tmp_path, make_manifest(tmp_path))
    _assert_no_manager_secret(env)
    assert env[contract.ENV_JOB_ID] == "job-env" and env[contract.ENV_ATTEMPT] == "1"
    assert env[contract.ENV_MANAGER_URL] == "http://127.0.0.1:1"
    assert env[contract.ENV_ATTEMPT_TOKEN] == "attempt-token-" + "t" * 20
    assert env[contract.ENV_MTBP_S] == "60.000" and env[contract.ENV_S3_RETRY_BUDGET_S] == "7"
    assert env["PATH"] == os.environ["PATH"] and env["TOKENIZERS_PARALLELISM"] == "false"
    # A job on local disk gets no cloud credential at all.
    assert not [k for k in {**AWS, **GCP} if k in env]


def test_cloud_credentials_only_for_a_job_on_that_cloud(tmp_path, manager_env):
    manifest = make_manifest(tmp_path)
    manifest["spec"]["checkpoint"]["uri"] = "s3://bucket/ckpt"
    env = _launch_and_read_env(tmp_path, manifest)
    _assert_no_manager_secret(env)
    assert {k: env.get(k) for k in AWS} == AWS
    assert not [k for k in GCP if k in env], "an S3 job gets no GCP credentials"


@pytest.mark.parametrize("where, uri, clouds", [
    (("data", "shards"), "s3://b/shards", {"s3"}),
    (("checkpoint", "uri"), "gs://b/ckpt", {"gs"}),
    (("data", "prepare"), {"inputs": ["/local/a.txt", "s3://b/raw/"]}, {"s3"}),
    (("data", "shards"), "/local/shards", set()),
])
def test_cloud_schemes_finds_every_storage_uri(tmp_path, where, uri, clouds):
    manifest = make_manifest(tmp_path)
    manifest["spec"][where[0]][where[1]] = uri
    assert contract.cloud_schemes(manifest) == clouds


def test_gcs_job_gets_gcp_credentials_and_no_aws_ones(manager_env):
    env = contract.trainer_environ(dict(os.environ), frozenset({"gs"}))
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == GCP["GOOGLE_APPLICATION_CREDENTIALS"]
    assert not [k for k in AWS if k in env]
    _assert_no_manager_secret(env)


def test_warm_head_environment_has_no_manager_secret(manager_env, monkeypatch):
    monkeypatch.setenv(contract.ENV_JOB_ID, "some-attempt-of-the-manager-process")
    env = head_environ(dict(os.environ))
    _assert_no_manager_secret(env)
    assert contract.ENV_JOB_ID not in env, "each job brings its own identity through its runtime_env"
    assert env["PATH"] == os.environ["PATH"]
    # Shared by jobs on every storage: the cloud variables stay (docs/manager.md says why).
    assert env["AWS_SECRET_ACCESS_KEY"] == AWS["AWS_SECRET_ACCESS_KEY"]


def test_runtime_env_for_workers_carries_only_contract_names(tmp_path, manager_env, monkeypatch):
    from orchestrator.train.driver.launch import env_for_workers

    monkeypatch.setenv(contract.ENV_JOB_ID, "job-w")
    monkeypatch.setenv(contract.ENV_ATTEMPT, "2")
    monkeypatch.setenv(contract.ENV_ATTEMPT_TOKEN, "attempt-secret-" + "w" * 20)
    env = env_for_workers(tmp_path)
    assert set(env) <= contract.ATTEMPT_ENV | contract.INHERITED_BERTCTL_ENV
    assert env[contract.ENV_JOB_ID] == "job-w" and env[contract.ENV_ATTEMPT] == "2"
    assert contract.ENV_ATTEMPT_TOKEN not in env and "attempt-secret-" not in "".join(env.values())
    assert Path(env[contract.ENV_ATTEMPT_TOKEN_FILE]).read_text() == "attempt-secret-" + "w" * 20
    assert not [k for k in {**MANAGER_SECRETS, **AWS, **GCP} if k in env], "Ray keeps a runtime_env in its GCS"


# -- revoked attempt tokens, through the real API -------------------------------------------------

ADMIN = "admin-" + "r" * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from orchestrator.manager.server import Manager, ManagerConfig, ServerThread

    manager = Manager(ManagerConfig(port=0, data_dir=tmp_path_factory.mktemp("api"), admin_token=ADMIN))
    thread = ServerThread(manager, supervise=False).start()
    yield manager
    thread.stop()


def _heartbeat(server, token: str, job_id: str, attempt: int = 1):
    import httpx

    return httpx.post(f"{server.url}/v1/jobs/{job_id}/heartbeat", json={"attempt": attempt, "step": 3},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _ended_attempt(server, tmp_path, heartbeat_first: bool) -> tuple[str, str]:
    """A job whose attempt 1 ended (its token revoked) and was retried as attempt 2."""
    import httpx
    import yaml

    from orchestrator.contract import EndReason
    from orchestrator.manager.auth import hash_token, new_token
    from orchestrator.manager.policy import Action, AttemptEndDecision

    r = httpx.post(f"{server.url}/v1/jobs", content=yaml.safe_dump(make_manifest(tmp_path)),
                   headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 201, r.text
    job_id, token = r.json()["id"], new_token()
    assert server.store.start_attempt(job_id, 1, hash_token(token), 1.0)
    if heartbeat_first:  # the manager has seen (and cached) the token while the attempt was live
        assert _heartbeat(server, token, job_id).status_code == 200
    server.store.end_attempt(job_id, 1, EndReason.PREEMPTED, AttemptEndDecision(Action.RETRY), 2.0)
    assert server.store.lookup_token(hash_token(token))["revoked"] is True
    return job_id, token


def test_a_revoked_token_is_refused(server, tmp_path):
    job_id, token = _ended_attempt(server, tmp_path, heartbeat_first=False)
    r = _heartbeat(server, token, job_id)
    assert r.status_code == 409 and "revoked" in r.json()["detail"], r.text
    before = server.store.get_job(job_id)
    assert before["phase"] != "RUNNING", "the ended attempt's heartbeat changed nothing"
    import httpx

    other = httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert other.status_code == 409 and token not in other.text


def test_a_token_seen_before_its_attempt_ended_is_refused_too(server, tmp_path):
    job_id, token = _ended_attempt(server, tmp_path, heartbeat_first=True)
    r = _heartbeat(server, token, job_id)
    assert r.status_code == 409, r.text
    assert server.store.get_job(job_id)["current_attempt"] == 1
    assert [a["last_step"] for a in server.store.attempts(job_id)] == [3], "the refused heartbeat changed nothing"
