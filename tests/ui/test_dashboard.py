"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real `bertctl server`
running a real job on the fake trainer: login, the jobs table, the curves, a preemption, cancel."""

from __future__ import annotations

import os
import signal

import httpx
import yaml
from playwright.sync_api import expect

from orchestrator.manager.store import Store

from tests.manager.conftest import make_manifest
from tests.manager.procs import ADMIN

DATA_ROUTES = ["/ui/api/jobs", "/ui/api/jobs/{id}", "/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/metrics",
               "/v1/jobs/{id}/events", "/v1/jobs/{id}/logs", "/metrics"]


def _submit(server, tmp_path, **labels) -> str:
    manifest = make_manifest(tmp_path, name="dash", max_steps=400, every=10, labels=labels)
    r = server.http.post("/v1/jobs", content=yaml.safe_dump(manifest))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _sign_in(page, server, token: str = ADMIN) -> None:
    page.goto(f"{server.url}/ui")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")


def _vertices(page, metric: str) -> int:
    """The points the page drew for ``metric``: every vertex of every attempt's line."""
    return page.eval_on_selector_all(
        f'svg[data-metric="{metric}"] polyline.series',
        "lines => lines.reduce((n, l) => n + l.getAttribute('points').trim().split(/\\s+/).length, 0)")


def test_without_a_token_ui_is_the_login_form_and_no_route_gives_data(server, tmp_path, page):
    job_id = _submit(server, tmp_path, **{"fake-step-s": "0.2"})
    r = httpx.get(f"{server.url}/ui")
    assert r.status_code == 200 and 'id="login-form"' in r.text
    assert job_id not in r.text and "app.js" not in r.text and 'id="view"' not in r.text
    for route in DATA_ROUTES:
        assert httpx.get(server.url + route.format(id=job_id)).status_code == 401, route
    assert httpx.post(f"{server.url}/v1/jobs/{job_id}/cancel").status_code == 401
    page.goto(f"{server.url}/ui")
    expect(page.locator("#login-form")).to_be_visible()
    assert page.locator("#view").count() == 0 and page.locator("#login-error").is_hidden()
    assert page.console.errors == []


def test_a_wrong_token_is_refused_and_the_right_one_signs_in(server, page):
    _sign_in(page, server, "not-the-token-" + "x" * 30)
    expect(page.locator("#login-error")).to_be_visible()
    assert page.context.cookies() == []
    assert page.request.get(f"{server.url}/ui/api/jobs").status == 401
    page.fill("#token", ADMIN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Jobs")
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert page.evaluate("document.cookie") == "", "the page's scripts cannot read the token"
    assert page.console.errors == []


def test_cookie_requests_that_change_something_need_the_csrf_value_and_this_origin(server):
    login = httpx.post(f"{server.url}/ui/login", data={"token": ADMIN}, headers={"Origin": server.url})
    assert login.status_code == 303 and login.headers["location"] == "/ui"
    cookies = login.cookies
    page = httpx.get(f"{server.url}/ui", cookies=cookies).text
    csrf = page.split('name="bertctl-csrf" content="')[1].split('"')[0]
    assert len(csrf) == 64 and ADMIN not in page
    cancel = f"{server.url}/v1/jobs/no-such-job/cancel"  # 404 once the caller is let in
    assert httpx.get(f"{server.url}/v1/jobs", cookies=cookies).status_code == 200
    assert httpx.post(cancel, cookies=cookies).status_code == 403
    assert httpx.post(cancel, cookies=cookies, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert httpx.post(cancel, cookies=cookies, headers={"X-CSRF-Token": csrf,
                                                        "Origin": "http://evil.example"}).status_code == 403
    assert httpx.post(cancel, cookies=cookies, headers={"X-CSRF-Token": csrf, "Origin": server.url}).status_code == 404
    assert server.http.post(cancel).status_code == 404, "a bearer token needs no CSRF value"
    assert httpx.post(f"{server.url}/ui/login", data={"token": ADMIN},
                      headers={"Origin": "http://evil.example"}).status_code == 403


def _preempt(server, job_id: str) -> None:
    """What a spot reclaim does: SIGTERM to the attempt's process group (its trainer checkpoints and exits 75)."""
    store = Store(f"sqlite:///{server.data_dir / 'manager.db'}")
    try:
        handle = store.attempts(job_id)[0]["handle"]
    finally:
        store.close()
    os.killpg(int(handle), signal.SIGTERM)


def test_the_dashboard_follows_a_real_job_through_a_preemption_and_cancels_it(server, tmp_path, page):
    job_id = _submit(server, tmp_path, **{"fake-step-s": "0.05"})
    _sign_in(page, server)
    row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible()
    expect(row.locator(".phase")).to_have_text("RUNNING", timeout=30_000)
    row.locator("a").click()
    expect(page.locator("#job-id")).to_have_text(job_id)
    page.wait_for_function("() => document.querySelectorAll('svg[data-metric=loss] polyline.series').length === 1 "
                           "&& +document.querySelector('svg[data-metric=loss] polyline').dataset.points >= 15")
    _preempt(server, job_id)
    expect(page.locator('#timeline rect.tl-attempt[data-attempt="1"]')).to_have_attribute(
        "data-end-reason", "preempted", timeout=30_000)
    expect(page.locator('#attempts tr[data-attempt="1"]')).to_contain_text("preempted")
    expect(page.locator('#timeline text.tl-end[data-attempt="2"]')).to_have_text("running", timeout=30_000)
    expect(page.locator("#timeline rect.tl-gap")).to_have_count(1)
    expect(page.locator('svg[data-metric="loss"] line.marker.end title')).to_have_text("attempt 1: preempted")
    page.wait_for_function("() => document.querySelectorAll('svg[data-metric=loss] polyline.series').length === 2")
    page.click("#cancel")
    page.click("#confirm-yes")
    expect(page.locator(".job-head .phase")).to_have_text("CANCELLED", timeout=30_000)
    api = server.http.get(f"/v1/jobs/{job_id}/metrics").json()["points"]  # final: the job takes no more heartbeats
    assert len(api) >= 20 and {p["attempt"] for p in api} == {1, 2}
    page.wait_for_function(f"() => document.getElementById('view').dataset.points === '{len(api)}'")
    assert _vertices(page, "loss") == len([p for p in api if p["loss"] is not None])
    assert _vertices(page, "tokens_per_s") == len(api)
    assert server.job(job_id)["attempts"][1]["end_reason"] == "cancelled"
    assert page.console.errors == []
