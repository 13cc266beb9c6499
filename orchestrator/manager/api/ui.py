"""The dashboard at /ui: a login form, then one page (manager/ui/) that reads the API as it polls.

Auth is the API's own admin token. The login form puts it in an HttpOnly, SameSite=Strict cookie,
which ``deps.principal`` accepts where no bearer header is sent; without it /ui is the login form
alone and every data route answers 401. A request that changes something with the cookie (cancel)
must also send the page's CSRF value and come from this origin (``deps.session_token``). The
assets (manager/ui/static) are code without data and are served to anyone; pages forbid anything
but this origin's scripts and styles (Content-Security-Policy).
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from orchestrator.manager.api.deps import ClockDep, SESSION_COOKIE, StoreDep, require_admin, require_job, same_origin
from orchestrator.manager.auth import Authenticator, csrf_token_for
from orchestrator.manager.goodput import job_goodput
from orchestrator.manager.models import Attempt
from orchestrator.manager.store import Store, row
from orchestrator.manager.views import job_detail, job_summary

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
MAX_LOGIN_BYTES = 4096
MAX_CHECKPOINTS_SHOWN = 100  # a job's page refreshes every 2 s: the newest ones, not years of them
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
    "X-Frame-Options": "DENY"}

pages = APIRouter(prefix="/ui", include_in_schema=False)
data = APIRouter(prefix="/ui/api", tags=["dashboard"], dependencies=[Depends(require_admin)])


def install(app: FastAPI) -> None:
    """The dashboard's pages, its data routes and its assets on ``app``."""
    app.include_router(pages)
    app.include_router(data)
    app.mount("/ui/static", StaticFiles(directory=UI_DIR / "static"), name="ui-static")


@lru_cache(maxsize=None)
def _template(name: str) -> str:
    return (UI_DIR / name).read_text(encoding="utf-8")


def _page(name: str, **values: str) -> HTMLResponse:
    html = _template(name)
    for key, value in values.items():
        html = html.replace("{{" + key + "}}", value)
    return HTMLResponse(html, headers=_PAGE_HEADERS)


async def _admin(auth: Authenticator, token: str | None) -> bool:
    found = token and (auth.peek(token) or await run_in_threadpool(auth.resolve, token))
    return bool(found) and found.kind == "admin"


@pages.get("")
@pages.get("/")
async def dashboard(request: Request) -> HTMLResponse:
    """The dashboard for a signed-in session, else the login form and nothing else."""
    token = request.cookies.get(SESSION_COOKIE)
    if await _admin(request.app.state.auth, token):
        return _page("index.html", csrf=csrf_token_for(token))
    refused = request.query_params.get("login") == "refused"
    return _page("login.html", error_hidden="" if refused else " hidden")


@pages.post("/login")
async def login(request: Request) -> RedirectResponse:
    """The login form (urlencoded ``token``): 303 to /ui with the session cookie, or back to the form.
    A refusal answers 303 too, so the browser shows the form again without a failed request."""
    if not same_origin(request):
        raise HTTPException(403, "log in from this server's own /ui page")
    if int(request.headers.get("content-length") or 0) > MAX_LOGIN_BYTES:
        raise HTTPException(413, "login form too large")
    form = parse_qs((await request.body())[:MAX_LOGIN_BYTES].decode("utf-8", errors="replace"))
    token = (form.get("token") or [""])[0].strip()
    if not await _admin(request.app.state.auth, token):
        return RedirectResponse("/ui?login=refused", status_code=303)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@pages.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    if not same_origin(request):
        raise HTTPException(403, "log out from this server's own /ui page")
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _attempts_by_job(store: Store, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every listed job's attempts in one query (the table refreshes every few seconds)."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with store.tx(durable=False) as s:
        for att in s.scalars(select(Attempt).where(Attempt.job_id.in_(job_ids)).order_by(Attempt.number)):
            found[att.job_id].append(row(att))
    return found


@data.get("/jobs")
def jobs_overview(store: StoreDep, clock: ClockDep) -> dict[str, Any]:
    """The jobs table: each job's summary with its attempts, goodput fraction and tokens/s."""
    now, jobs = clock(), store.list_jobs(limit=200)
    attempts = _attempts_by_job(store, [j["id"] for j in jobs])
    rows = [{**job_summary(j), "attempts": len(attempts[j["id"]]),
             "goodput": job_goodput(j, attempts[j["id"]], now)["productive_fraction"],
             "tokens_per_s": (j["metrics"] or {}).get("tokens_per_s")} for j in jobs]
    return {"now": now, "jobs": rows}


@data.get("/jobs/{job_id}")
def job_page(job_id: str, store: StoreDep, clock: ClockDep) -> dict[str, Any]:
    """A job's view (attempts, goodput) with its newest checkpoints, for its page."""
    job = require_job(store, job_id)
    now = clock()
    newest = sorted(store.checkpoints(job_id), key=lambda c: (c["step"], c["id"]))[-MAX_CHECKPOINTS_SHOWN:]
    return {"now": now, "job": job_detail(store, job, now, with_manifest=False), "checkpoints": newest}
