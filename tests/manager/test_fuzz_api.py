"""Property-based tests over every API payload, through the real server on loopback (SQLite and
PostgreSQL): manifests, query parameters, path ids and heartbeats are answered 2xx or 4xx with a
body naming the problem, never 500 and never a hang (every request has a client timeout)."""

from __future__ import annotations

import copy
import json
import secrets
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

import tests.test_fuzz_spec as fuzz
from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.server import Manager, ManagerConfig, ServerThread
from tests.manager.conftest import PG_URL, make_manifest

ADMIN = "admin-" + "f" * 40
TIMEOUT = httpx.Timeout(20.0)  # far above any answer; a hang fails the test instead of blocking it
QUERY_VALUE = st.one_of(st.text(max_size=12), st.integers(-2**70, 2**70).map(str),
                        st.sampled_from(["", "0", "-1", "1", "true", "nan", "PENDING", "running", "\x00", "10001"]))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request, tmp_path_factory):
    """A running manager (no supervisor), an admin client, a cancelled job and a job with a live attempt."""
    tmp = tmp_path_factory.mktemp("fuzz-api")
    schema = f"t_{secrets.token_hex(6)}" if request.param == "postgres" else None
    cfg = ManagerConfig(port=0, data_dir=tmp, admin_token=ADMIN, supervise=False,
                        database_url=PG_URL if schema else None, db_schema=schema)
    manager = Manager(cfg)
    thread = ServerThread(manager, supervise=False).start()
    admin = httpx.Client(base_url=manager.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=TIMEOUT)
    ended = admin.post("/v1/jobs", content=json.dumps(make_manifest(tmp, name="ended"))).json()["id"]
    assert admin.post(f"/v1/jobs/{ended}/cancel").json()["phase"] == "CANCELLED"
    live = admin.post("/v1/jobs", content=json.dumps(make_manifest(tmp, name="live"))).json()["id"]
    token = new_token()
    assert manager.store.start_attempt(live, 1, hash_token(token), 1.0)
    attempt = httpx.Client(base_url=manager.url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    yield {"admin": admin, "attempt": attempt, "ended": ended, "live": live}
    admin.close()
    attempt.close()
    thread.stop()
    if schema:
        engine = create_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def check_answer(r: httpx.Response) -> None:
    """2xx, or a 4xx whose body says what was wrong; never a server error."""
    assert r.status_code < 500, f"{r.status_code} for {r.request.method} {r.request.url}: {r.text[:500]}"
    if r.status_code >= 400:
        detail = r.json()["detail"]
        assert detail, r.text


@settings(max_examples=60)
@given(body=fuzz.manifest_text(), submission_id=st.none() | st.text(max_size=12))
def test_submitted_manifests_are_accepted_or_refused_naming_a_field(api, body, submission_id):
    params = {"submission_id": submission_id} if submission_id is not None else {}
    r = api["admin"].post("/v1/jobs", content=body.encode("utf-8", "surrogatepass"), params=params)
    check_answer(r)
    if r.status_code == 422 and isinstance(r.json()["detail"], dict):
        for problem in r.json()["detail"]["problems"]:
            assert problem["path"] and problem["message"]


@settings(max_examples=25)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_a_manifest_are_refused(api, body):
    check_answer(api["admin"].post("/v1/jobs", content=body))


@settings(max_examples=60)
@given(route=st.sampled_from(["/v1/jobs", "/v1/jobs/{ended}/events", "/v1/jobs/{ended}/logs", "/v1/jobs/{ended}"]),
       params=st.dictionaries(st.sampled_from(["phase", "name", "limit", "after", "attempt", "follow", "x"]),
                              QUERY_VALUE, max_size=4))
def test_query_parameters_never_break_a_listing(api, route, params):
    check_answer(api["admin"].get(route.format(ended=api["ended"]), params=params))


@settings(max_examples=60)
@given(job_id=st.text(min_size=1, max_size=40), route=st.sampled_from(["", "/events", "/logs", "/cancel", "/heartbeat"]))
def test_any_job_id_in_the_path_is_answered(api, job_id, route):
    url = "/v1/jobs/" + quote(job_id, safe="", errors="surrogatepass") + route  # NUL, '/' and all, percent-encoded
    client = api["attempt"] if route == "/heartbeat" else api["admin"]
    method = "POST" if route in ("/cancel", "/heartbeat") else "GET"
    check_answer(client.request(method, url, json={"attempt": 1} if route == "/heartbeat" else None))


HEARTBEAT = {"attempt": 1, "status": "running", "step": 3, "max_steps": 20, "loss": 2.5, "tokens_per_s": 100.0,
             "lr": 1e-4, "tokens_seen": 1000, "world_size": 1, "message": "ok",
             "checkpoint": {"step": 2, "uri": "/tmp/ck/2", "world_size": 1, "save_seconds": 0.5},
             "skipped_checkpoints": [{"step": 1, "uri": "/tmp/ck/1", "reason": "partial"}]}


@st.composite
def heartbeat_payload(draw) -> Any:
    """A heartbeat with some values of another type, keys removed or added, or deep nesting."""
    hb: Any = copy.deepcopy(HEARTBEAT)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(hb)))
        kind = draw(st.sampled_from(["replace", "delete", "add", "nest"]))
        if kind == "delete":
            del hb[key]
        elif kind == "add":
            hb[draw(st.text(max_size=8))] = draw(fuzz.JSONISH)
        else:
            value = draw(fuzz.JSONISH) if kind == "replace" else fuzz.nested(1, draw(st.integers(1, 200)), True)
            hb[key] = value
        if not hb:
            break
    return hb if draw(st.integers(0, 9)) else draw(fuzz.JSONISH)


@settings(max_examples=80)
@given(payload=heartbeat_payload())
def test_heartbeat_payloads_are_applied_or_refused(api, payload):
    body = json.dumps(payload)  # NaN / Infinity are written as JSON's common extension, as some senders do
    r = api["attempt"].post(f"/v1/jobs/{api['live']}/heartbeat", content=body,
                            headers={"content-type": "application/json"})
    check_answer(r)


@settings(max_examples=10)
@given(levels=st.integers(1000, 100_000), opener=st.sampled_from(["[", '{"a":']))
def test_deeply_nested_heartbeat_is_refused(api, levels, opener):
    r = api["attempt"].post(f"/v1/jobs/{api['live']}/heartbeat", content=opener * levels,
                            headers={"content-type": "application/json"})
    check_answer(r)
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize("field,value", [("message", "a\x00b"), ("checkpoint", {"step": 2, "uri": "/x\x00", "world_size": 1}),
                                         ("skipped_checkpoints", [{"step": 1, "uri": "/x", "reason": "\x00"}])])
def test_heartbeat_strings_with_nul_are_answered(api, field, value):
    """PostgreSQL text cannot hold NUL: such a heartbeat must still get a 2xx or 4xx, not a 500."""
    r = api["attempt"].post(f"/v1/jobs/{api['live']}/heartbeat", json={"attempt": 1, "step": 4, field: value})
    check_answer(r)
