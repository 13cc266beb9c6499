"""A job's metric history: its per-step points from heartbeats, downsampled (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from orchestrator.manager.api.deps import StoreDep, require_admin, require_job
from orchestrator.manager.metric_history import MAX_POINTS_PER_JOB, history

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["history"], dependencies=[Depends(require_admin)])


@router.get("/metrics")
def metrics(job_id: str, store: StoreDep, since_step: int = Query(0, ge=0, description="Only steps above it."),
            max_points: int = Query(MAX_POINTS_PER_JOB, ge=1, le=MAX_POINTS_PER_JOB,
                                    description="At most this many, picked evenly.")) -> dict[str, Any]:
    """Points by attempt, then step: ``attempt, step, at, loss, mlm_accuracy, nsp_accuracy, lr,
    tokens_per_s, world_size, sample_digest`` (null where the heartbeat had none)."""
    require_job(store, job_id)
    return {"job_id": job_id, "max_points_per_job": MAX_POINTS_PER_JOB,
            "points": history(store, job_id, since_step, max_points)}
