"""Metric history: a point per heartbeat step, bounded per job by bucket thinning, on SQLite and
PostgreSQL; and GET /v1/jobs/{id}/metrics over real HTTP."""

from __future__ import annotations

import httpx
import pytest
import yaml

from orchestrator.contract import Heartbeat
from orchestrator.manager import metric_history as mh
from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.heartbeats import apply_heartbeat
from orchestrator.manager.server import Manager, ManagerConfig, ServerThread
from orchestrator.spec import parse_manifest

from tests.manager.conftest import PG_URL, make_manifest

ADMIN = "admin-" + "m" * 40


def _running_job(store, tmp_path) -> str:
    job, _ = store.create_job(parse_manifest(make_manifest(tmp_path, max_steps=10_000)).to_dict(), "local", 1.0)
    assert store.start_attempt(job["id"], 1, hash_token(new_token()), 1.0)
    return job["id"]


def _hb(step: int, attempt: int = 1, **extra) -> Heartbeat:
    return Heartbeat(attempt=attempt, step=step, loss=10.0 / step, mlm_accuracy=step / 1e4, tokens_per_s=100.0 + step,
                     lr=1e-4, world_size=2, **extra)


def _record(store, job_id: str, attempt: int, steps) -> None:
    for step in steps:
        with store.tx() as s:
            mh.record_point(s, job_id, attempt, _hb(step, attempt), attempt * 1000.0 + step)


def _steps(store, job_id):
    return [(p["attempt"], p["step"]) for p in mh.history(store, job_id)]


def test_every_heartbeat_step_becomes_a_point_with_its_metrics(store, tmp_path):
    job_id = _running_job(store, tmp_path)
    apply_heartbeat(store, job_id, Heartbeat(attempt=1, status="starting", phase="building the engine"), 2.0)
    for step in range(1, 13):
        assert apply_heartbeat(store, job_id, _hb(step, sample_digest=f"{step:016x}"), 10.0 + step).value == "ok"
    # The final word repeats the last step without metrics: it completes that point, adds none.
    apply_heartbeat(store, job_id, Heartbeat(attempt=1, step=12, status="preempted", nsp_accuracy=0.5), 30.0)
    points = mh.history(store, job_id)
    assert [p["step"] for p in points] == list(range(1, 13))
    assert points[4] == {"attempt": 1, "step": 5, "at": 15.0, "loss": 2.0, "mlm_accuracy": 5e-4, "nsp_accuracy": None,
                         "lr": 1e-4, "tokens_per_s": 105.0, "world_size": 2, "sample_digest": "0000000000000005"}
    assert points[-1]["nsp_accuracy"] == 0.5 and points[-1]["loss"] == pytest.approx(10 / 12)
    assert points[-1]["sample_digest"] == "000000000000000c", "the final word keeps what it does not carry"


def test_a_long_run_is_thinned_to_one_point_per_bucket_evenly(store, tmp_path, monkeypatch):
    monkeypatch.setattr(mh, "MAX_POINTS_PER_JOB", 20)
    monkeypatch.setattr(mh, "BUCKETS", 10)
    job_id = _running_job(store, tmp_path)
    _record(store, job_id, 1, range(1, 11))
    assert [s for _, s in _steps(store, job_id)] == list(range(1, 11)), "below the bound every step stays"
    _record(store, job_id, 1, range(11, 201))
    # Step 200 needs buckets of 32 steps to fit in 10: the newest step of each bucket stays, and the last one.
    assert [s for _, s in _steps(store, job_id)] == [31, 63, 95, 127, 159, 191, 200]


def test_attempts_repeating_steps_keep_their_own_points_within_the_bound(store, tmp_path, monkeypatch):
    monkeypatch.setattr(mh, "MAX_POINTS_PER_JOB", 20)
    monkeypatch.setattr(mh, "BUCKETS", 10)
    job_id = _running_job(store, tmp_path)
    _record(store, job_id, 1, range(1, 9))
    _record(store, job_id, 2, range(6, 11))  # resumed from the checkpoint at step 5
    assert _steps(store, job_id) == [(1, s) for s in range(1, 9)] + [(2, s) for s in range(6, 11)]
    for attempt in range(3, 30):  # a job preempted over and over, each attempt redoing steps 1..10
        _record(store, job_id, attempt, range(1, 11))
        assert len(_steps(store, job_id)) <= 20
    assert _steps(store, job_id)[-1] == (29, 10), "the newest point always stays"


def test_a_late_heartbeat_does_not_replace_a_newer_step(store, tmp_path, monkeypatch):
    monkeypatch.setattr(mh, "BUCKETS", 2)
    job_id = _running_job(store, tmp_path)
    _record(store, job_id, 1, [1, 2, 3, 4, 8, 7, 5])  # buckets of 4 steps once step 8 arrives; 5 comes late
    assert [s for _, s in _steps(store, job_id)] == [3, 7, 8]


def test_evenly_keeps_the_first_and_the_last():
    assert mh.evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert mh.evenly(list(range(10)), 1) == [9]
    assert mh.evenly(list(range(3)), 5) == [0, 1, 2]
    assert [mh.stride_for(s) for s in (0, 1000, 1001, 2000, 2001, 1_000_000)] == [1, 1, 2, 2, 4, 1024]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request, tmp_path):
    schema = request.getfixturevalue("pg_schema") if request.param == "postgres" else None
    cfg = ManagerConfig(port=0, data_dir=tmp_path / "data", admin_token=ADMIN, db_schema=schema,
                        database_url=PG_URL if schema else None)
    thread = ServerThread(Manager(cfg), supervise=False).start()
    yield thread.manager
    thread.stop()


def test_the_metrics_route_filters_and_downsamples(api, tmp_path):
    admin = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    job_id = admin.post("/v1/jobs", content=yaml.safe_dump(make_manifest(tmp_path, max_steps=500))).json()["id"]
    token = new_token()
    assert api.store.start_attempt(job_id, 1, hash_token(token), 1.0)
    trainer = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    for step in range(1, 31):
        r = trainer.post(f"/v1/jobs/{job_id}/heartbeat", json=_hb(step).model_dump(exclude_none=True))
        assert r.status_code == 200, r.text
    body = admin.get(f"/v1/jobs/{job_id}/metrics").json()
    assert body["max_points_per_job"] == mh.MAX_POINTS_PER_JOB and len(body["points"]) == 30
    assert body["points"][29]["loss"] == pytest.approx(10 / 30) and body["points"][29]["tokens_per_s"] == 130.0
    since = admin.get(f"/v1/jobs/{job_id}/metrics", params={"since_step": 25}).json()["points"]
    assert [p["step"] for p in since] == [26, 27, 28, 29, 30]
    few = admin.get(f"/v1/jobs/{job_id}/metrics", params={"max_points": 4}).json()["points"]
    assert [p["step"] for p in few] == [1, 11, 20, 30]
    assert httpx.get(f"{api.url}/v1/jobs/{job_id}/metrics").status_code == 401
    assert trainer.get(f"/v1/jobs/{job_id}/metrics").status_code == 403
    assert admin.get("/v1/jobs/nope/metrics").status_code == 404
    assert admin.get(f"/v1/jobs/{job_id}/metrics", params={"max_points": 0}).status_code == 422
