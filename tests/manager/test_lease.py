"""The supervisor's lease (manager/lease.py) on SQLite and PostgreSQL: one holder, epochs that grow
at each takeover, a holder that stops trusting its lease before anyone else can take it, and a
supervisor that acts only while it holds the lease."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.errors import PermanentError
from orchestrator.manager.backends.local import LocalBackend
from orchestrator.manager.lease import Lease
from orchestrator.manager.store import Store
from orchestrator.manager.supervisor import Supervisor
from orchestrator.spec import parse_manifest

from tests.manager.conftest import FAKE_TRAINER, make_manifest


def test_one_holder_and_the_epoch_grows_at_each_takeover(store):
    first, second = Lease(store, ttl_s=1.0), Lease(store, ttl_s=1.0)
    first.tick()
    second.tick()
    assert first.held() and first.epoch == 1 and not second.held() and second.epoch is None
    assert first.verify(1) and not second.verify(1)
    first.tick()  # a renewal keeps the epoch
    assert first.epoch == 1
    first_gone_at = None
    while not second.held():  # `first` stops renewing (a dead replica); `second` keeps trying
        if first_gone_at is None and not first.held():
            first_gone_at = time.monotonic()
        second.tick()
        time.sleep(0.02)
    # the old holder stopped trusting its lease before the new one could take it over
    assert first_gone_at is not None and not first.held()
    assert second.epoch == 2 and second.verify(2)
    assert not first.verify(1), "the old epoch is refused"
    first.tick()  # the old holder learns it lost, and cannot take it back while it is held
    assert not first.held() and second.held()


def test_a_released_lease_is_taken_at_the_next_try(store):
    first, second = Lease(store, ttl_s=30.0), Lease(store, ttl_s=30.0)
    first.tick()
    second.tick()
    assert first.held() and not second.held()
    first.release()
    second.tick()
    assert second.held() and second.epoch == 2 and not first.held()


def test_a_holder_that_cannot_reach_the_database_stops_at_once(store, tmp_path):
    holder = Lease(store, ttl_s=30.0)
    holder.tick()
    assert holder.held()
    # The same holder, its database now unreachable (nothing listens on port 1 / a directory).
    url = ("postgresql+psycopg://postgres@127.0.0.1:1/test" if store.dialect == "postgresql"
           else f"sqlite:///{tmp_path}")
    holder.store = Store(url)
    holder.tick()
    assert not holder.held() and holder.epoch is None, "a failed renewal drops the lease at once, not at its end"
    holder.store.close()


@pytest.mark.postgres
def test_racing_replicas_elect_exactly_one(pg_schema):
    store = Store("postgresql+psycopg://postgres@127.0.0.1:5432/test", schema=pg_schema)
    store.migrate()
    try:
        leases = [Lease(store, ttl_s=0.5) for _ in range(6)]
        epochs = []
        for round_ in range(4):
            gate = threading.Barrier(len(leases))
            threads = [threading.Thread(target=lambda l=lease: (gate.wait(), l.tick())) for lease in leases]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            holders = [lease for lease in leases if lease.held()]
            assert len(holders) == 1, f"round {round_}: {len(holders)} holders"
            epochs.append(holders[0].epoch)
            for lease in leases:
                lease._drop()  # every replica stalls until the lease has ended: a new election
            time.sleep(0.6)
        assert epochs == [1, 2, 3, 4], "each election is a new epoch"
    finally:
        store.close()


def test_a_supervisor_without_the_lease_launches_nothing(store, tmp_path):
    backend = LocalBackend(tmp_path / "data", trainer_command=FAKE_TRAINER)
    holder, standby = Lease(store, ttl_s=2.0), Lease(store, ttl_s=2.0)
    holder.start()
    try:
        if store.dialect == "sqlite":  # one replica only, said by name
            with pytest.raises(PermanentError, match="SQLite serves one manager replica.*PostgreSQL"):
                standby.start()
        else:
            standby.start()
        manifest = parse_manifest(make_manifest(tmp_path, max_steps=5)).to_dict()
        job, _ = store.create_job(manifest, "local", time.time())
        Supervisor(store, {"local": backend}, "http://127.0.0.1:9", lease=standby).reconcile_once()
        assert store.attempts(job["id"]) == [] and store.get_job(job["id"])["phase"] == "PENDING"
        leader = Supervisor(store, {"local": backend}, "http://127.0.0.1:9", lease=holder)
        leader.reconcile_once()
        assert leader.wait_idle(30)
        att = store.attempts(job["id"])[0]
        assert att["number"] == 1 and att["state"] == "running"
        backend.terminate(job["id"], 1, att["handle"], 0.0)
    finally:
        standby.stop()
        holder.stop()
