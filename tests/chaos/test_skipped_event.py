"""A heartbeat naming skipped checkpoints becomes one manager event per checkpoint and attempt.

Real HTTP (uvicorn on 127.0.0.1), the real heartbeat handler and store; no trainer needed.
Older trainers that do not send the field keep working (it is optional).
"""

from __future__ import annotations

import httpx
import pytest
import yaml

from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.server import Manager, ManagerConfig, ServerThread
from tests.manager.conftest import make_manifest

pytestmark = pytest.mark.chaos
ADMIN = "admin-" + "b" * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    manager = Manager(ManagerConfig(port=0, data_dir=tmp_path_factory.mktemp("skip"), admin_token=ADMIN))
    thread = ServerThread(manager, supervise=False).start()
    yield manager
    thread.stop()


def _client(server, token) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_skipped_checkpoint_is_an_event_once(server, tmp_path):
    r = _client(server, ADMIN).post("/v1/jobs", content=yaml.safe_dump(make_manifest(tmp_path)))
    job_id, token = r.json()["id"], new_token()
    assert server.store.start_attempt(job_id, 1, hash_token(token), 1.0)
    skipped = [{"step": 8, "uri": "s3://b/ck/step-00000008", "reason": "ds/x.pt does not match its sha256"}]
    c = _client(server, token)
    for step in (5, 6):  # the trainer repeats the list; the manager records it once
        hb = c.post(f"/v1/jobs/{job_id}/heartbeat",
                    json={"attempt": 1, "step": step, "resumed_from_step": 4, "skipped_checkpoints": skipped})
        assert hb.status_code == 200, hb.text
    assert c.post(f"/v1/jobs/{job_id}/heartbeat", json={"attempt": 1, "step": 7}).status_code == 200
    events = [e for e in _client(server, ADMIN).get(f"/v1/jobs/{job_id}/events").json()["events"]
              if e["type"] == "checkpoint_skipped"]
    assert len(events) == 1
    assert "step 8" in events[0]["message"] and "sha256" in events[0]["message"]
    assert events[0]["data"]["step"] == 8 and events[0]["attempt"] == 1


def test_skipped_list_is_bounded(server, tmp_path):
    r = _client(server, ADMIN).post("/v1/jobs", content=yaml.safe_dump(make_manifest(tmp_path)))
    job_id, token = r.json()["id"], new_token()
    assert server.store.start_attempt(job_id, 1, hash_token(token), 1.0)
    many = [{"step": i, "uri": "u", "reason": "r"} for i in range(9)]
    r = _client(server, token).post(f"/v1/jobs/{job_id}/heartbeat", json={"attempt": 1, "skipped_checkpoints": many})
    assert r.status_code == 422
    long = [{"step": 1, "uri": "u", "reason": "x" * 501}]
    r = _client(server, token).post(f"/v1/jobs/{job_id}/heartbeat", json={"attempt": 1, "skipped_checkpoints": long})
    assert r.status_code == 422
