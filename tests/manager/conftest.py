"""Fixtures of the manager tests: manifests, stores on SQLite and PostgreSQL, a fake trainer."""

from __future__ import annotations

import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from orchestrator.manager.store import Store

FAKE_TRAINER = [sys.executable, str(Path(__file__).with_name("fake_trainer.py"))]
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def make_manifest(tmp: Path, name: str = "tiny", max_steps: int = 20, every: int = 5,
                  labels: dict[str, str] | None = None, **recovery: Any) -> dict[str, Any]:
    rec = {"max_restarts": 3, "backoff_s": 0.0, "max_backoff_s": 1.0, "heartbeat_timeout_s": 30.0}
    rec.update(recovery)
    return {
        "apiVersion": "bertctl/v1", "kind": "PretrainJob",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "model": {"preset": "bert-tiny"},
            "data": {"shards": str(tmp / "shards"), "seq_len": 32, "nsp": False},
            "training": {"max_steps": max_steps, "global_batch_size": 4, "micro_batch_size": 4},
            "deepspeed": {"zero_stage": 0},
            "checkpoint": {"uri": str(tmp / f"ckpt-{uuid.uuid4().hex[:6]}"), "every_steps": every,
                           "preemption_deadline_s": 1.0},
            "recovery": rec,
        },
    }


@pytest.fixture
def pg_schema():
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    yield schema
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path) -> Store:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'm.db'}")
    else:
        s = Store(PG_URL, schema=request.getfixturevalue("pg_schema"))
    s.migrate()
    yield s
    s.close()
