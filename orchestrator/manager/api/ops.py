"""The operator's routes: /healthz (no token: probes have none) and /metrics (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from orchestrator.manager import metrics as metrics_mod
from orchestrator.manager.api.deps import ClockDep, StoreDep, require_admin

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(store: StoreDep) -> dict[str, str]:
    return {"status": "ok", "database": store.dialect}


@router.get("/metrics", dependencies=[Depends(require_admin)])
def metrics(store: StoreDep, clock: ClockDep) -> Response:
    return Response(metrics_mod.render(store, clock()), media_type="text/plain; version=0.0.4")
