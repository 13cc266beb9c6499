"""Jobs: submit a manifest, list, view, cancel (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from orchestrator.errors import ManifestError
from orchestrator.manager.api.deps import ClockDep, StoreDep, require_admin, require_job
from orchestrator.manager.phases import TERMINAL, Phase
from orchestrator.manager.store import ConflictError
from orchestrator.manager.views import job_detail, job_summary
from orchestrator.spec import PretrainJob, load_manifest_text

MAX_MANIFEST_BYTES = 1 << 20
SUBMISSION_ID = r"^[\x21-\x7e]+$"  # printable ASCII, as a header can carry it (and never a NUL)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_admin)])


@router.post("", status_code=201)
async def submit(request: Request, response: Response, store: StoreDep, clock: ClockDep,
                 submission_id: str | None = Query(None, max_length=200, pattern=SUBMISSION_ID)) -> dict[str, Any]:
    """201 with a new job; 200 with the first one when its submission id comes again."""
    body = await request.body()
    if len(body) > MAX_MANIFEST_BYTES:
        raise HTTPException(413, "manifest larger than 1 MiB")
    sid = submission_id or request.headers.get("x-submission-id")
    job = _parse_manifest(body)
    try:
        row, created = store.create_job(job.to_dict(), request.app.state.default_backend, clock(), sid)
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from None
    if not created:
        response.status_code = 200
    return {**job_summary(row), "created": created}


def _parse_manifest(body: bytes) -> PretrainJob:
    """The validated manifest, or 422 naming every field at fault."""
    try:
        return load_manifest_text(body.decode("utf-8", errors="replace"), "<request body>")
    except ManifestError as exc:
        problems = [{"path": p, "message": m} for p, m in exc.problems]
        raise HTTPException(422, {"message": "invalid manifest", "problems": problems}) from None


@router.get("")
def list_jobs(store: StoreDep, phase: Phase | None = None,
              name: str | None = Query(None, max_length=63, pattern=r"^[a-z0-9-]+$", description="A job name."),
              limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    rows = store.list_jobs(phase.value if phase else None, name, limit)
    return {"jobs": [job_summary(r) for r in rows]}


@router.get("/{job_id}")
def get_job(job_id: str, store: StoreDep, clock: ClockDep) -> dict[str, Any]:
    return job_detail(store, require_job(store, job_id), clock())


@router.post("/{job_id}/cancel")
def cancel(job_id: str, store: StoreDep, clock: ClockDep) -> dict[str, Any]:
    require_job(store, job_id)
    phase = store.request_cancel(job_id, clock())
    return {"id": job_id, "phase": phase, "cancel_requested": phase not in {p.value for p in TERMINAL}}
