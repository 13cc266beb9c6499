"""The manager's HTTP API (FastAPI, versioned under /v1; OpenAPI at /openapi.json).

One ``APIRouter`` per resource, each in its own module:

- ``ops``        /healthz (anyone) and /metrics (admin)
- ``jobs``       submit, list, get and cancel jobs (admin)
- ``history``    a job's events and its attempts' logs (admin)
- ``heartbeat``  an attempt's heartbeats (that attempt's token only)
- ``evaluations`` a job's checkpoint evaluations (admin reads; each evaluation's own token reports)

``deps`` holds what they share, as FastAPI dependencies: the store, the authenticator and the
clock live on ``app.state``; the caller is found from its bearer token (``HTTPBearer``).
Rights: the admin token may do everything except speak for an attempt; an attempt token may
only heartbeat for its own attempt. /healthz needs no token.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from fastapi import FastAPI

from orchestrator.manager.api import evaluations, heartbeat, history, jobs, ops
from orchestrator.manager.api.body_limit import BodyLimit
from orchestrator.manager.auth import Authenticator
from orchestrator.manager.store import Store


def create_app(store: Store, auth: Authenticator, backend: str = "local",
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The API over ``store``; new jobs run on ``backend``; ``clock`` stamps every change."""
    app = FastAPI(title="bertctl job manager", version="1", docs_url="/docs")
    app.state.store, app.state.auth, app.state.clock = store, auth, clock
    app.state.default_backend = backend
    # Heartbeats are the hot path: they run on a small dedicated pool instead of the shared
    # threadpool, so many trainers do not contend for the GIL and the SQLite write lock at once.
    app.state.hb_pool = ThreadPoolExecutor(max_workers=1 if store.dialect == "sqlite" else 4,
                                           thread_name_prefix="heartbeat")
    for router in (ops.router, jobs.router, history.router, heartbeat.router, evaluations.router):
        app.include_router(router)
    app.add_middleware(BodyLimit)
    return app
