"""An attempt's heartbeats: only that attempt's own token may send them (fencing by number)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

from orchestrator.contract import Heartbeat
from orchestrator.manager.api.deps import ClockDep, PrincipalDep, StoreDep
from orchestrator.manager.heartbeats import Outcome, apply_heartbeat

_OK = b'{"ok":true}'

router = APIRouter(prefix="/v1/jobs", tags=["attempts"])


@router.post("/{job_id}/heartbeat", responses={200: {"content": {"application/json": {"example": {"ok": True}}}}})
async def heartbeat(job_id: str, hb: Heartbeat, caller: PrincipalDep, request: Request, store: StoreDep,
                    clock: ClockDep) -> Response:
    """403 for any other token, 409 for a token of another attempt or an attempt no longer current."""
    if caller.kind != "attempt" or caller.job_id != job_id:
        raise HTTPException(403, "only the token of one of this job's attempts may send its heartbeats")
    if caller.attempt != hb.attempt:
        raise HTTPException(409, f"this token belongs to attempt {caller.attempt}, not attempt {hb.attempt}")
    nul = _nul_field(hb.model_dump())
    if nul:
        raise HTTPException(422, f"heartbeat field {nul} contains a NUL character, which cannot be stored; "
                                 "send it without one")
    loop = asyncio.get_running_loop()
    outcome = await loop.run_in_executor(request.app.state.hb_pool, apply_heartbeat, store, job_id, hb, clock())
    if outcome is Outcome.UNKNOWN_JOB:
        raise HTTPException(404, f"no job '{job_id}'")
    if outcome is Outcome.STALE:
        raise HTTPException(409, f"attempt {hb.attempt} is not the job's current running attempt; stop")
    return Response(_OK, media_type="application/json")  # pre-encoded: this is the hot path


def _nul_field(value: Any, path: str = "") -> str | None:
    """The first string field holding a NUL (PostgreSQL text cannot store one: the write would be a 500)."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _nul_field(item, f"{path}.{key}".lstrip("."))
        if found:
            return found
    return None
