"""The dashboard's Evaluations table (spec.evaluation) in a real browser against a real `bertctl server`:
each evaluated checkpoint step with its state and every task's scores or failure, newest first; none
for a job without evaluations."""

from __future__ import annotations

import yaml
from playwright.sync_api import expect

from orchestrator.manager.models import Evaluation, EvaluationScore
from orchestrator.manager.store import Store

from tests.manager.conftest import make_manifest
from tests.manager.procs import terminal
from tests.ui.test_dashboard import _sign_in


def _finished_job(server, tmp_path) -> str:
    manifest = make_manifest(tmp_path, name="dash-eval", max_steps=4, every=2)
    r = server.http.post("/v1/jobs", content=yaml.safe_dump(manifest))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    server.wait(job_id, terminal, timeout_s=60)
    return job_id


def _record(server, job_id: str) -> None:
    """What the manager records for two evaluated steps (evaluations.py's tables, written directly:
    the browser test is about the page, tests/manager/test_evaluations.py about producing them)."""
    store = Store(f"sqlite:///{server.data_dir / 'manager.db'}")
    try:
        with store.tx() as s:
            for step, state in ((2, "succeeded"), (4, "failed")):
                ev = Evaluation(job_id=job_id, step=step, checkpoint_uri=f"/c/step-{step}", state=state,
                                backend="local", handle="", token_hash="", log_path="", message="", created_at=1.0,
                                ended_at=2.0)
                s.add(ev)
                s.flush()
                s.add(EvaluationScore(evaluation_id=ev.id, job_id=job_id, step=step, task="sentiment",
                                      kind="classification", status="succeeded", metrics={"accuracy": 0.5 + step / 10},
                                      message="", created_at=2.0))
                if state == "failed":
                    s.add(EvaluationScore(evaluation_id=ev.id, job_id=job_id, step=step, task="ner",
                                          kind="token-classification", status="failed", metrics={},
                                          message="valid.conll: no such file", created_at=2.0))
    finally:
        store.close()


def test_the_job_page_shows_each_evaluated_step_with_its_scores(server, tmp_path, page):
    plain = _finished_job(server, tmp_path)
    job_id = _finished_job(server, tmp_path)
    _record(server, job_id)
    _sign_in(page, server)
    page.goto(f"{server.url}/ui#/jobs/{job_id}")
    rows = page.locator("#evaluations tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-step", "4")
    expect(rows.nth(0)).to_contain_text("sentiment: accuracy 0.9000; ner failed: valid.conll: no such file")
    expect(page.locator('#evaluations tr[data-step="2"]')).to_have_attribute("data-state", "succeeded")
    expect(page.locator('#evaluations tr[data-step="2"]')).to_contain_text("sentiment: accuracy 0.7000")
    page.goto(f"{server.url}/ui#/jobs/{plain}")
    expect(page.locator("#job-id")).to_have_text(plain)
    expect(page.locator("#evaluations")).to_have_count(0)
    assert page.console.errors == []
