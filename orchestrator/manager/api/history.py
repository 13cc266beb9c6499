"""A job's history: its events and its attempts' trainer output (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from orchestrator.manager.api.deps import StoreDep, require_admin, require_job
from orchestrator.manager.api.logstream import stream_logs

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["history"], dependencies=[Depends(require_admin)])


@router.get("/events")
def events(job_id: str, store: StoreDep, after: int = Query(0, ge=0),
           limit: int = Query(1000, ge=1, le=10000)) -> dict[str, Any]:
    """Events with ids above ``after``, oldest first."""
    require_job(store, job_id)
    return {"events": store.events(job_id, after, limit)}


@router.get("/logs")
def logs(job_id: str, store: StoreDep, attempt: int | None = Query(None, ge=1),
         follow: bool = False) -> StreamingResponse:
    """One attempt's output, or every attempt's in order; with follow, until the job ends."""
    require_job(store, job_id)
    return StreamingResponse(stream_logs(store, job_id, attempt, follow), media_type="text/plain")
