"""Admin token sources and token hashing."""

import pytest

from orchestrator.errors import PermanentError
from orchestrator.manager.auth import Authenticator, admin_token_from_env, hash_token


def test_admin_token_from_env_or_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("from-file-" + "x" * 20 + "\n")
    assert admin_token_from_env({"BERTCTL_ADMIN_TOKEN": "direct"}) == "direct"
    assert admin_token_from_env({"BERTCTL_ADMIN_TOKEN_FILE": str(f)}) == "from-file-" + "x" * 20
    assert admin_token_from_env({}) is None
    with pytest.raises(PermanentError, match="not a file"):
        admin_token_from_env({"BERTCTL_ADMIN_TOKEN_FILE": str(tmp_path / "missing")})


def test_short_admin_token_is_refused(store):
    with pytest.raises(PermanentError, match="at least 16"):
        Authenticator(store, "short")


def test_only_hashes_are_stored(store, tmp_path):
    from tests.manager.conftest import make_manifest
    job, _ = store.create_job(make_manifest(tmp_path), "local", 1.0)
    secret = "s3cret-attempt-token-" + "z" * 20
    store.start_attempt(job["id"], 1, hash_token(secret), 2.0)
    auth = Authenticator(store, "admin-" + "q" * 20)
    p = auth.resolve(secret)
    assert (p.kind, p.job_id, p.attempt) == ("attempt", job["id"], 1)
    assert auth.resolve("admin-" + "q" * 20).kind == "admin" and auth.resolve("nope") is None
    from sqlalchemy import text
    with store.engine.connect() as conn:
        dump = " ".join(str(r) for r in conn.execute(text("SELECT * FROM tokens")))
    assert secret not in dump and hash_token(secret) in dump


def test_a_revoked_token_resolves_as_revoked_and_is_never_cached(store, tmp_path):
    from orchestrator.contract import EndReason
    from orchestrator.manager.policy import Action, AttemptEndDecision
    from tests.manager.conftest import make_manifest

    job, _ = store.create_job(make_manifest(tmp_path), "local", 1.0)
    secret = "attempt-token-" + "r" * 30
    store.start_attempt(job["id"], 1, hash_token(secret), 2.0)
    store.end_attempt(job["id"], 1, EndReason.PREEMPTED, AttemptEndDecision(Action.RETRY), 3.0)
    auth = Authenticator(store, "admin-" + "q" * 20)
    p = auth.resolve(secret)
    assert (p.kind, p.job_id, p.attempt, p.revoked) == ("attempt", job["id"], 1, True)
    assert auth.peek(secret) is None, "a revoked token must be looked up (and refused) every time"
