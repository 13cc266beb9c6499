"""The operator's routes: /healthz (no token: probes have none) and /metrics (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from orchestrator.manager import metrics as metrics_mod
from orchestrator.manager.api.deps import ClockDep, StoreDep, require_admin

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(store: StoreDep, request: Request) -> dict[str, Any]:
    """Every replica answers 200 (they all serve the API); ``supervising`` says whether this one
    holds the supervisor's lease (manager/lease.py), ``lease_epoch`` under which epoch."""
    lease = getattr(request.app.state, "lease", None)
    epoch = lease.epoch if lease is not None else None
    return {"status": "ok", "database": store.dialect, "supervising": epoch is not None, "lease_epoch": epoch}


@router.get("/metrics", dependencies=[Depends(require_admin)])
def metrics(store: StoreDep, clock: ClockDep) -> Response:
    return Response(metrics_mod.render(store, clock()), media_type="text/plain; version=0.0.4")
