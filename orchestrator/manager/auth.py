"""Bearer tokens: one admin token (from the environment) and one token per attempt.

Tokens are random 256-bit secrets, so a plain sha256 is enough to store them (no salt or
slow hash needed: there is nothing to brute-force). Only the hash is ever stored or compared.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import PermanentError
from orchestrator.manager.store import Store

ENV_ADMIN_TOKEN = "BERTCTL_ADMIN_TOKEN"
ENV_ADMIN_TOKEN_FILE = "BERTCTL_ADMIN_TOKEN_FILE"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_for(token: str) -> str:
    """The dashboard's anti-CSRF value for a session holding ``token``: derived, so nothing is stored,
    and one-way, so the page that shows it never learns the token (docs/manager.md, "Dashboard")."""
    return hashlib.sha256(b"bertctl-csrf\0" + token.encode()).hexdigest()


def admin_token_from_env(env: dict[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    if env.get(ENV_ADMIN_TOKEN):
        return env[ENV_ADMIN_TOKEN].strip()
    path = env.get(ENV_ADMIN_TOKEN_FILE)
    if path:
        p = Path(path)
        if not p.is_file():
            raise PermanentError(f"{ENV_ADMIN_TOKEN_FILE} names {path}, which is not a file; "
                                 "point it at a file holding the admin token")
        return p.read_text().strip()
    return None


@dataclass(frozen=True)
class Principal:
    kind: str                   # "admin" | "attempt"
    job_id: str | None = None
    attempt: int | None = None
    revoked: bool = False       # its attempt has ended: the token authorizes nothing any more


class Authenticator:
    def __init__(self, store: Store, admin_token: str):
        if not admin_token or len(admin_token) < 16:
            raise PermanentError(f"the admin token must be at least 16 characters; set {ENV_ADMIN_TOKEN} "
                                 f"or {ENV_ADMIN_TOKEN_FILE} (e.g. to the output of `openssl rand -hex 32`)")
        self._store = store
        self._admin_hash = hash_token(admin_token)
        # An attempt token's (job, attempt) never changes, so live ones are cached. A token is
        # revoked in the transaction that ends its attempt (Store._close_attempt), and every
        # heartbeat checks, under the job's row lock, that its attempt has not ended (fencing):
        # so a cached token whose attempt ended is refused too. Revoked tokens are never cached.
        self._cache: dict[str, Principal] = {}
        self._lock = threading.Lock()

    def peek(self, token: str) -> Principal | None:
        """The admin or an already-seen attempt token, without touching the database."""
        digest = hash_token(token)
        if hmac.compare_digest(digest, self._admin_hash):
            return Principal("admin")
        with self._lock:
            return self._cache.get(digest)

    def resolve(self, token: str | None) -> Principal | None:
        if not token:
            return None
        digest = hash_token(token)
        if hmac.compare_digest(digest, self._admin_hash):
            return Principal("admin")
        with self._lock:
            cached = self._cache.get(digest)
        if cached:
            return cached
        found = self._store.lookup_token(digest)
        if not found or found["kind"] != "attempt":
            return None
        if found["revoked"]:
            return Principal("attempt", found["job_id"], found["attempt"], revoked=True)
        principal = Principal("attempt", found["job_id"], found["attempt"])
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = principal
        return principal
