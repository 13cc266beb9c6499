"""The manager's HTTP API (FastAPI, versioned under /v1; OpenAPI at /openapi.json).

Rights: the admin token may do everything except speak for an attempt; an attempt token may
only heartbeat for its own attempt. /healthz needs no token.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from orchestrator.contract import Heartbeat
from orchestrator.errors import ManifestError
from orchestrator.manager import metrics as metrics_mod
from orchestrator.manager.auth import Authenticator, Principal
from orchestrator.manager.heartbeats import Outcome, apply_heartbeat
from orchestrator.manager.models import TERMINAL, Phase
from orchestrator.manager.store import ConflictError, Store
from orchestrator.manager.views import job_detail, job_summary
from orchestrator.spec import load_manifest_text

MAX_MANIFEST_BYTES = 1 << 20
_OK = b'{"ok":true}'


def create_app(store: Store, auth: Authenticator, backend: str = "local",
               clock: Callable[[], float] = time.time) -> FastAPI:
    app = FastAPI(title="bertctl job manager", version="1", docs_url="/docs")
    app.state.store, app.state.auth = store, auth

    # Heartbeats are the hot path: they run on a small dedicated pool instead of the shared
    # threadpool, so many trainers do not contend for the GIL and the SQLite write lock at once.
    hb_pool = ThreadPoolExecutor(max_workers=1 if store.dialect == "sqlite" else 4, thread_name_prefix="heartbeat")
    app.state.hb_pool = hb_pool

    async def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token; pass --token or set BERTCTL_TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})
        token = token.strip()
        found = auth.peek(token) or await run_in_threadpool(auth.resolve, token)
        if found is None:
            raise HTTPException(401, "unknown token; check --token / BERTCTL_TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})
        return found

    def admin(p: Principal = Depends(principal)) -> Principal:
        if p.kind != "admin":
            raise HTTPException(403, "this token may only send heartbeats for its own attempt")
        return p

    def job_or_404(job_id: str) -> dict[str, Any]:
        job = store.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"no job '{job_id}'; `bertctl list` shows the jobs")
        return job

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "database": store.dialect}

    @app.get("/metrics", dependencies=[Depends(admin)])
    def metrics() -> Response:
        return Response(metrics_mod.render(store, clock()), media_type="text/plain; version=0.0.4")

    @app.post("/v1/jobs", status_code=201, dependencies=[Depends(admin)])
    async def submit(request: Request, response: Response,
                     submission_id: str | None = Query(None, max_length=200)) -> dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_MANIFEST_BYTES:
            raise HTTPException(413, "manifest larger than 1 MiB")
        sid = submission_id or request.headers.get("x-submission-id")
        try:
            job = load_manifest_text(body.decode("utf-8", errors="replace"), "<request body>")
        except ManifestError as exc:
            problems = [{"path": p, "message": m} for p, m in exc.problems]
            raise HTTPException(422, {"message": "invalid manifest", "problems": problems}) from None
        try:
            row, created = store.create_job(job.to_dict(), backend, clock(), sid)
        except ConflictError as exc:
            raise HTTPException(409, str(exc)) from None
        if not created:
            response.status_code = 200
        return {**job_summary(row), "created": created}

    @app.get("/v1/jobs", dependencies=[Depends(admin)])
    def list_jobs(phase: Phase | None = None, name: str | None = None,
                  limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        rows = store.list_jobs(phase.value if phase else None, name, limit)
        return {"jobs": [job_summary(r) for r in rows]}

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(admin)])
    def get_job(job_id: str) -> dict[str, Any]:
        return job_detail(store, job_or_404(job_id), clock())

    @app.get("/v1/jobs/{job_id}/events", dependencies=[Depends(admin)])
    def events(job_id: str, after: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000)) -> dict[str, Any]:
        job_or_404(job_id)
        return {"events": store.events(job_id, after, limit)}

    @app.get("/v1/jobs/{job_id}/logs", dependencies=[Depends(admin)])
    def logs(job_id: str, attempt: int | None = Query(None, ge=1), follow: bool = False) -> StreamingResponse:
        job_or_404(job_id)
        return StreamingResponse(_stream_logs(store, job_id, attempt, follow), media_type="text/plain")

    @app.post("/v1/jobs/{job_id}/cancel", dependencies=[Depends(admin)])
    def cancel(job_id: str) -> dict[str, Any]:
        job_or_404(job_id)
        phase = store.request_cancel(job_id, clock())
        return {"id": job_id, "phase": phase, "cancel_requested": phase not in {p.value for p in TERMINAL}}

    @app.post("/v1/jobs/{job_id}/heartbeat", responses={200: {"content": {"application/json": {"example": {"ok": True}}}}})
    async def heartbeat(job_id: str, hb: Heartbeat, p: Principal = Depends(principal)) -> Response:
        if p.kind != "attempt" or p.job_id != job_id:
            raise HTTPException(403, "only the token of one of this job's attempts may send its heartbeats")
        if p.attempt != hb.attempt:
            raise HTTPException(409, f"this token belongs to attempt {p.attempt}, not attempt {hb.attempt}")
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(hb_pool, apply_heartbeat, store, job_id, hb, clock())
        if outcome is Outcome.UNKNOWN_JOB:
            raise HTTPException(404, f"no job '{job_id}'")
        if outcome is Outcome.STALE:
            raise HTTPException(409, f"attempt {hb.attempt} is not the job's current running attempt; stop")
        return Response(_OK, media_type="application/json")  # pre-encoded: this is the hot path

    return app


def _stream_logs(store: Store, job_id: str, first: int | None, follow: bool, poll_s: float = 0.3) -> Iterator[bytes]:
    """Attempt logs in order; with follow, wait for new output and new attempts until the job ends."""
    number = first or 1
    while True:
        attempts = {a["number"]: a for a in store.attempts(job_id)}
        att = attempts.get(number)
        if att is None:
            if not follow or _job_over(store, job_id):
                return
            time.sleep(poll_s)
            continue
        if len(attempts) > 1 or first is None:
            yield f"==> attempt {number} <==\n".encode()
        yield from _stream_file(store, job_id, att, follow, poll_s)
        if first is not None and not follow:
            return
        number += 1


def _stream_file(store: Store, job_id: str, att: dict[str, Any], follow: bool, poll_s: float) -> Iterator[bytes]:
    path = att["log_path"]
    offset = 0
    while True:
        chunk = _read_from(path, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if not follow:
            return
        current = {a["number"]: a for a in store.attempts(job_id)}.get(att["number"]) or att
        if current["state"] == "ended":
            tail = _read_from(current["log_path"] or path, offset)
            if tail:
                yield tail
            return
        path = current["log_path"] or path
        time.sleep(poll_s)


def _read_from(path: str, offset: int, size: int = 1 << 16) -> bytes:
    if not path:
        return b""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)
    except FileNotFoundError:
        return b""


def _job_over(store: Store, job_id: str) -> bool:
    job = store.get_job(job_id)
    return job is None or Phase(job["phase"]) in TERMINAL
