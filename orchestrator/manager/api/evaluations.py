"""A job's checkpoint evaluations (spec.evaluation): read them (admin), report them (the evaluation).

POST is the evaluation process's alone: its bearer token is the one its launch minted for that
one evaluation (stored hashed on the evaluation's row), valid only while it runs. Neither the admin
token nor an attempt's can speak for an evaluation, and an evaluation's token can do nothing else.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from orchestrator.contract import EvaluationReport
from orchestrator.manager.api.deps import ClockDep, StoreDep, bearer, require_admin, require_job
from orchestrator.manager.evaluations import ReportOutcome, job_evaluations, record_report

router = APIRouter(prefix="/v1/jobs/{job_id}/evaluations", tags=["evaluations"])

_REFUSALS = {
    ReportOutcome.UNKNOWN: (404, "no such evaluation of this job"),
    ReportOutcome.FORBIDDEN: (401, "not this evaluation's token"),
    ReportOutcome.ENDED: (409, "this evaluation is not running any more (ended, killed past its budget, or its "
                               "job was cancelled); stop"),
    ReportOutcome.INVALID: (422, "the step or task is not this evaluation's; send the step it was started for "
                                 "and a task named in spec.evaluation.tasks"),
}


@router.get("", dependencies=[Depends(require_admin)])
def list_evaluations(job_id: str, store: StoreDep) -> dict[str, Any]:
    """Every evaluation of the job (oldest step first) with its tasks' scores, and ``latest``: the
    newest score of each task."""
    require_job(store, job_id)
    return job_evaluations(store, job_id)


@router.post("")
async def report(job_id: str, body: EvaluationReport, store: StoreDep, clock: ClockDep,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> dict[str, Any]:
    """One task's outcome, from the evaluation process (idempotent: a retried report is kept once)."""
    if credentials is None:
        raise HTTPException(401, "missing bearer token: the evaluation's own token",
                            headers={"WWW-Authenticate": "Bearer"})
    if "\x00" in job_id or "\x00" in (body.message or "") or any("\x00" in k for k in body.metrics):
        raise HTTPException(422, "a field contains a NUL character, which cannot be stored; send it without one")
    outcome = await run_in_threadpool(record_report, store, job_id, body, credentials.credentials, clock())
    if outcome is not ReportOutcome.OK:
        status, detail = _REFUSALS[outcome]
        raise HTTPException(status, detail)
    return {"ok": True}
