"""Manager replicas that start together on an empty PostgreSQL database both come up: migrations
are serialised by an advisory lock (the first creates the schema, the others find it at head)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect

from orchestrator.manager.store import Store
from tests.manager.replicas import fresh_database

pytestmark = pytest.mark.postgres
REPLICAS = 4


def test_replicas_migrating_an_empty_database_at_once_all_succeed():
    with fresh_database() as url:
        stores = [Store(url) for _ in range(REPLICAS)]
        start, errors = threading.Barrier(REPLICAS), []

        def migrate(store: Store) -> None:
            start.wait()
            try:
                store.migrate()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        try:
            assert errors == []
            tables = set(inspect(stores[0].engine).get_table_names())
            assert {"jobs", "attempts", "metric_points", "leader_leases", "alembic_version"} <= tables
        finally:
            for s in stores:
                s.close()
