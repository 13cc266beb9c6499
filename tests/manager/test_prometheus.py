"""/metrics per job, on SQLite and PostgreSQL: the gauges carry the job label and the right values,
and a scrape costs the same few SQL statements for 3 jobs as for 40 (counted with SQLAlchemy's
cursor events on the store's engine)."""

from __future__ import annotations

import contextlib

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from orchestrator.contract import CheckpointRef, EndReason, Heartbeat
from orchestrator.manager import metrics
from orchestrator.manager.auth import hash_token
from orchestrator.manager.heartbeats import apply_heartbeat
from orchestrator.manager.policy import Action, AttemptEndDecision

from tests.manager.conftest import make_manifest


def _running_job(store, tmp_path, name: str, now: float) -> str:
    """A job on its second attempt (the first lost a worker), with a checkpoint at step 10."""
    jid = store.create_job(make_manifest(tmp_path, name=name, max_steps=100), "local", now)[0]["id"]
    for number in (1, 2):
        assert store.start_attempt(jid, number, hash_token(f"{jid}-{number}"), now + number)
        store.record_launch(jid, number, "1", "/tmp/log", now + number)
        ckpt = CheckpointRef(step=10, uri=f"file:///c/{jid}/10", world_size=1) if number == 1 else None
        beat = Heartbeat(attempt=number, step=12 if number == 1 else 15, loss=2.0, tokens_per_s=13907.5,
                         resumed_from_step=0 if number == 1 else 10, checkpoint=ckpt, checkpoint_seconds=0.5)
        apply_heartbeat(store, jid, beat, now + number + 1)
        if number == 1:
            store.end_attempt(jid, 1, EndReason.WORKER_LOST, AttemptEndDecision(Action.RETRY, 0.0, "lost"),
                              now + 1.5, -9)
    return jid


@contextlib.contextmanager
def counted_statements(engine):
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_per_job_gauges_have_the_job_label_and_values(store, tmp_path):
    jid = _running_job(store, tmp_path, "prom", 100.0)
    done = store.create_job(make_manifest(tmp_path, name="queued"), "local", 100.0)[0]["id"]
    store.request_cancel(done, 101.0)
    got = _samples(metrics.render(store, now=200.0))
    job = (("job", jid),)
    assert got[("bertctl_job_step", job)] == 15
    assert got[("bertctl_job_tokens_per_second", job)] == 13907.5
    assert got[("bertctl_job_restarts", job)] == 1 and got[("bertctl_job_current_attempt", job)] == 2
    assert got[("bertctl_job_seconds_since_checkpoint", job)] == 200.0 - 102.0  # committed at attempt 1's beat
    assert got[("bertctl_job_heartbeat_age_seconds", job)] == 200.0 - 103.0  # attempt 2 beat at 103
    assert 0.0 <= got[("bertctl_job_goodput_productive_fraction", job)] <= 1.0
    assert got[("bertctl_job_phase", (("job", jid), ("phase", "RUNNING")))] == 1.0
    assert got[("bertctl_job_phase", (("job", jid), ("phase", "PENDING")))] == 0.0
    assert got[("bertctl_job_phase", (("job", done), ("phase", "CANCELLED")))] == 1.0
    # An ended job has no age or checkpoint-staleness gauges (nothing to alert on).
    assert ("bertctl_job_seconds_since_checkpoint", (("job", done),)) not in got
    assert got[("bertctl_jobs", (("phase", "RUNNING"),))] == 1.0


def test_a_scrape_costs_the_same_queries_for_3_jobs_as_for_40(store, tmp_path):
    for i in range(3):
        _running_job(store, tmp_path, f"few-{i}", 100.0 + i)
    with counted_statements(store.engine) as few:
        small = metrics.render(store, now=500.0)
    for i in range(37):
        _running_job(store, tmp_path, f"many-{i}", 200.0 + i)
    with counted_statements(store.engine) as many:
        large = metrics.render(store, now=500.0)
    selects = [s for s in many if s.lstrip().upper().startswith("SELECT")]
    assert len(many) == len(few) and len(selects) <= 6, many
    assert large.count(b"bertctl_job_step{") == 40 and small.count(b"bertctl_job_step{") == 3


def test_the_grafana_dashboard_queries_only_exported_metrics(store, tmp_path):
    import json
    import re
    from pathlib import Path

    _running_job(store, tmp_path, "dash", 100.0)
    exported = {name for name, _ in _samples(metrics.render(store, now=200.0))}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "k8s" / "monitoring" / "grafana-dashboard.json")
                           .read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\bbertctl_\w+", e)}
    assert used and used <= exported, used - exported
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))
