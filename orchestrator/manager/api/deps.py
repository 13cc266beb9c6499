"""What the routers share, as FastAPI dependencies: the store, the clock, and who is calling.

``create_app`` puts the store, the authenticator and the clock on ``app.state``; these small
functions hand them to a route. The caller is found from ``Authorization: Bearer <token>``
(``HTTPBearer`` parses it; auto_error is off so the 401 says how to pass a token).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Callable
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from orchestrator.manager.auth import Authenticator, Principal, csrf_token_for
from orchestrator.manager.store import Store

bearer = HTTPBearer(auto_error=False, description="the admin token, or an attempt's own token")
# The dashboard's session: the token in an HttpOnly, SameSite=Strict cookie (api/ui.py sets it). A
# request that changes something with it must also carry the page's CSRF value in this header.
SESSION_COOKIE = "bertctl_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# The dependencies are ``async def`` although they do not await: FastAPI runs a plain ``def``
# dependency on its threadpool, a hop per dependency that the heartbeat hot path need not pay.

async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_auth(request: Request) -> Authenticator:
    return request.app.state.auth


async def get_clock(request: Request) -> Callable[[], float]:
    return request.app.state.clock


StoreDep = Annotated[Store, Depends(get_store)]
ClockDep = Annotated[Callable[[], float], Depends(get_clock)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def same_origin(request: Request) -> bool:
    """No Origin (not a browser's cross-site fetch), or the one this request was sent to."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def session_token(request: Request) -> str | None:
    """The dashboard session's token; for a request that changes something, only with the page's CSRF
    value and from this origin (SameSite=Strict already keeps the cookie off cross-site requests)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token and request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not same_origin(request) or not hmac.compare_digest(sent.encode(), csrf_token_for(token).encode()):
            raise HTTPException(403, f"a dashboard request that changes something needs the page's {CSRF_HEADER} "
                                     "header and its own origin; reload the dashboard")
    return token


async def principal(request: Request, auth: Annotated[Authenticator, Depends(get_auth)],
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """Who holds the bearer token: 401 without one or with one nobody issued; 409 for a revoked one.

    A revoked token is an ended attempt's: 409 is what tells its trainer (train/heartbeat.py) that
    it is fenced off and must stop, the same answer a heartbeat of an ended attempt always got;
    a 401 would leave that trainer training on."""
    token = credentials.credentials if credentials is not None else session_token(request)
    if not token:
        raise _unauthorized("missing bearer token; pass --token or set BERTCTL_TOKEN")
    # The admin and already-seen attempt tokens need no database round trip (the hot path).
    found = auth.peek(token) or await run_in_threadpool(auth.resolve, token)
    if found is None:
        raise _unauthorized("unknown token; check --token / BERTCTL_TOKEN")
    if found.revoked:
        raise HTTPException(409, f"attempt {found.attempt} is not the job's current attempt: it ended and its "
                                 "token was revoked; stop")
    return found


PrincipalDep = Annotated[Principal, Depends(principal)]


async def require_admin(caller: PrincipalDep) -> Principal:
    """Only the admin token: an attempt token may send its own heartbeats and nothing else."""
    if caller.kind != "admin":
        raise HTTPException(403, "this token may only send heartbeats for its own attempt")
    return caller


def require_job(store: Store, job_id: str) -> dict[str, Any]:
    """The job, or 404. Called inside a route (not a dependency) so a route's own parameters
    are validated first, as they always were (422 before 404)."""
    # No job id holds a NUL, and PostgreSQL refuses one in a query (a 500), so it is not asked.
    job = None if "\x00" in job_id else store.get_job(job_id)
    if job is None:
        raise HTTPException(404, f"no job '{job_id}'; `bertctl list` shows the jobs")
    return job
