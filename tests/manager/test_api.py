"""The HTTP API over real HTTP (uvicorn on 127.0.0.1): auth matrix, validation, fencing, views."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.server import Manager, ManagerConfig, ServerThread

from tests.manager.conftest import make_manifest

ADMIN = "admin-" + "a" * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    manager = Manager(ManagerConfig(port=0, data_dir=tmp, admin_token=ADMIN))
    thread = ServerThread(manager, supervise=False).start()
    yield manager
    thread.stop()


def client(server, token=None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)


def _job_with_attempt(server, tmp_path):
    """A job whose attempt 1 exists, and that attempt's token (as the supervisor would make it)."""
    r = client(server, ADMIN).post("/v1/jobs", content=yaml.safe_dump(make_manifest(tmp_path)))
    assert r.status_code == 201, r.text
    job_id, token = r.json()["id"], new_token()
    assert server.store.start_attempt(job_id, 1, hash_token(token), 1.0)
    return job_id, token


ROUTES = ["healthz", "metrics", "submit", "list", "get", "events", "logs", "cancel", "heartbeat"]


def _call(c: httpx.Client, route: str, job_id: str, tmp_path):
    return {
        "healthz": lambda: c.get("/healthz"),
        "metrics": lambda: c.get("/metrics"),
        "submit": lambda: c.post("/v1/jobs", content=json.dumps(make_manifest(tmp_path))),
        "list": lambda: c.get("/v1/jobs"),
        "get": lambda: c.get(f"/v1/jobs/{job_id}"),
        "events": lambda: c.get(f"/v1/jobs/{job_id}/events"),
        "logs": lambda: c.get(f"/v1/jobs/{job_id}/logs"),
        "cancel": lambda: c.post(f"/v1/jobs/{job_id}/cancel"),
        "heartbeat": lambda: c.post(f"/v1/jobs/{job_id}/heartbeat", json={"attempt": 1, "step": 1}),
    }[route]()


EXPECTED = {  # token kind -> status for every route but the two exceptions below
    "none": 401, "wrong": 401, "attempt": 403, "admin": 200,
}


@pytest.mark.parametrize("who", ["none", "wrong", "attempt", "admin"])
@pytest.mark.parametrize("route", ROUTES)
def test_auth_matrix(server, tmp_path, route, who):
    job_id, attempt_token = _job_with_attempt(server, tmp_path)
    token = {"none": None, "wrong": new_token(), "attempt": attempt_token, "admin": ADMIN}[who]
    r = _call(client(server, token), route, job_id, tmp_path)
    expected = EXPECTED[who]
    if route == "healthz":
        expected = 200
    elif route == "heartbeat" and who in ("attempt", "admin"):
        expected = 200 if who == "attempt" else 403
    elif route == "submit" and who == "admin":
        expected = 201
    assert r.status_code == expected, r.text
    assert attempt_token not in r.text and ADMIN not in r.text


def test_attempt_token_of_another_job_is_forbidden(server, tmp_path):
    job_a, token_a = _job_with_attempt(server, tmp_path)
    job_b, _ = _job_with_attempt(server, tmp_path)
    r = client(server, token_a).post(f"/v1/jobs/{job_b}/heartbeat", json={"attempt": 1})
    assert r.status_code == 403


def test_stale_attempt_heartbeat_is_refused(server, tmp_path):
    from orchestrator.contract import EndReason
    from orchestrator.manager.policy import Action, AttemptEndDecision
    job_id, old = _job_with_attempt(server, tmp_path)
    store = server.store
    store.end_attempt(job_id, 1, EndReason.PREEMPTED, AttemptEndDecision(Action.RETRY), 2.0)
    new = new_token()
    assert store.start_attempt(job_id, 2, hash_token(new), 3.0)
    stale = client(server, old).post(f"/v1/jobs/{job_id}/heartbeat", json={"attempt": 1, "step": 9})
    assert stale.status_code == 409 and "not the job's current" in stale.json()["detail"]
    claims_new = client(server, old).post(f"/v1/jobs/{job_id}/heartbeat", json={"attempt": 2, "step": 9})
    assert claims_new.status_code == 409, "a token of attempt 1 cannot speak for attempt 2"
    ok = client(server, new).post(f"/v1/jobs/{job_id}/heartbeat", json={"attempt": 2, "step": 3})
    assert ok.status_code == 200
    assert store.get_job(job_id)["step"] == 3


def test_bad_manifest_names_every_field_and_stores_nothing(server, tmp_path):
    m = make_manifest(tmp_path)
    m["spec"]["training"]["max_stepz"] = 3
    m["spec"]["training"]["global_batch_size"] = 0
    m["metadata"]["name"] = "Bad_Name"
    c = client(server, ADMIN)
    before = len(c.get("/v1/jobs").json()["jobs"])
    r = c.post("/v1/jobs", content=yaml.safe_dump(m))
    assert r.status_code == 422
    paths = {p["path"] for p in r.json()["detail"]["problems"]}
    assert {"spec.training.max_stepz", "spec.training.global_batch_size", "metadata.name"} <= paths
    assert c.post("/v1/jobs", content=": not yaml: [").status_code == 422
    assert len(c.get("/v1/jobs").json()["jobs"]) == before


def test_submission_id_is_idempotent(server, tmp_path):
    c = client(server, ADMIN)
    body = yaml.safe_dump(make_manifest(tmp_path, name="idem"))
    first = c.post("/v1/jobs", params={"submission_id": "s-42"}, content=body)
    second = c.post("/v1/jobs", headers={"X-Submission-Id": "s-42"}, content=body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"] and second.json()["created"] is False
    other = c.post("/v1/jobs", params={"submission_id": "s-42"}, content=yaml.safe_dump(make_manifest(tmp_path)))
    assert other.status_code == 409
    assert len(c.get("/v1/jobs", params={"name": "idem"}).json()["jobs"]) == 1


def test_job_view_events_metrics(server, tmp_path):
    job_id, token = _job_with_attempt(server, tmp_path)
    hb = {"attempt": 1, "step": 4, "loss": 3.5, "tokens_per_s": 1234.0, "resumed_from_step": 0,
          "checkpoint": {"step": 4, "uri": "/ck/4", "world_size": 1}, "checkpoint_seconds": 0.2}
    assert client(server, token).post(f"/v1/jobs/{job_id}/heartbeat", json=hb).status_code == 200
    c = client(server, ADMIN)
    job = c.get(f"/v1/jobs/{job_id}").json()
    assert job["phase"] == "RUNNING" and job["checkpoint"]["step"] == 4 and job["metrics"]["loss"] == 3.5
    assert job["attempts"][0]["number"] == 1 and "goodput" in job and job["goodput"]["checkpoint_s"] == 0.2
    assert "handle" not in job["attempts"][0]
    types = [e["type"] for e in c.get(f"/v1/jobs/{job_id}/events").json()["events"]]
    assert types == ["submitted", "launching", "checkpoint", "running"]
    after = c.get(f"/v1/jobs/{job_id}/events", params={"after": 10**9}).json()["events"]
    assert after == []
    text = c.get("/metrics").text
    assert 'bertctl_jobs{phase="RUNNING"}' in text
    assert f'bertctl_job_tokens_per_second{{job="{job_id}"}} 1234.0' in text
    assert f'bertctl_job_heartbeat_age_seconds{{job="{job_id}"}}' in text
    assert "bertctl_job_goodput_productive_fraction" in text
    assert c.get("/v1/jobs", params={"phase": "NOPE"}).status_code == 422
    assert c.get("/v1/jobs/nope").status_code == 404
    assert c.get("/openapi.json").json()["info"]["title"] == "bertctl job manager"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_body_is_refused_before_any_route_reads_it(server, tmp_path, declared):
    from orchestrator.manager.api.body_limit import MAX_REQUEST_BYTES
    job_id, token = _job_with_attempt(server, tmp_path)
    huge = json.dumps({"attempt": 1, "step": 7, "message": "x" * MAX_REQUEST_BYTES}).encode()
    body = huge if declared else iter([huge[i:i + 65536] for i in range(0, len(huge), 65536)])
    r = client(server, token).post(f"/v1/jobs/{job_id}/heartbeat", content=body,
                                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and f"larger than {MAX_REQUEST_BYTES} bytes" in r.json()["detail"]
    view = client(server, ADMIN).get(f"/v1/jobs/{job_id}").json()
    assert view["step"] == 0  # nothing of the refused heartbeat was applied
    ok = client(server, token).post(f"/v1/jobs/{job_id}/heartbeat", json={"attempt": 1, "step": 3})
    assert ok.status_code == 200  # the connection and the server are fine afterwards
