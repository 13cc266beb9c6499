"""Which manager replica supervises: a lease row in the store's database, with an epoch.

Every replica serves the API; only the holder of the ``supervisor`` row of ``leader_leases``
runs the reconcile loop. The row is taken and kept with conditional UPDATEs, so of several
replicas at most one wins (PostgreSQL re-checks the WHERE clause on the row it waited for):

* take over:  ``SET holder=me, epoch=epoch+1, expires_at=now+ttl WHERE expires_at <= now OR holder=me``
* renew:      ``SET expires_at=now+ttl WHERE holder=me AND epoch=E AND expires_at > now``

``now`` is the database's clock, so replicas on machines whose clocks disagree still agree on
when a lease ends. The holder renews every ``ttl/8``. Locally it trusts its lease only until
``ttl - ttl/4`` after it *sent* the last successful renewal (a monotonic clock), and drops it at
once when a renewal fails, errs or hangs past ttl/4: a replica cut off from the database stops acting at least
``ttl/4`` before any other replica can take over. Each takeover raises the epoch, so an action
prepared under an older epoch is refused by ``verify`` (the supervisor checks it before it
records or launches an attempt).

SQLite serves one replica: ``start`` refuses a second live manager on the same file.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

import psutil
from sqlalchemy import Float, and_, cast, extract, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.errors import PermanentError
from orchestrator.manager.models import LeaderLease
from orchestrator.manager.store import Store

log = logging.getLogger("bertctl.manager.lease")

LEASE_NAME = "supervisor"
DEFAULT_TTL_S = 8.0


def new_holder() -> str:
    """``host:pid:nonce``: who holds the lease (the nonce tells two managers of one process apart)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    def __init__(self, store: Store, ttl_s: float = DEFAULT_TTL_S, name: str = LEASE_NAME,
                 holder: str | None = None):
        if not ttl_s > 0:
            raise PermanentError(f"the lease TTL must be > 0 seconds, got {ttl_s}; e.g. --lease-ttl-s 8")
        self.store, self.name, self.ttl_s = store, name, float(ttl_s)
        self.holder = holder or new_holder()
        self.renew_every_s = self.ttl_s / 8
        self.margin_s = self.ttl_s / 4  # how long before the lease could end this replica stops acting
        self._epoch: int | None = None
        self._trusted_until = 0.0  # monotonic
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = False     # takes part in the election
        self.ever_held = False   # has supervised at least once

    # -- what the supervisor asks -------------------------------------------------------------------

    def held(self) -> bool:
        with self._lock:
            return self._epoch is not None and time.monotonic() < self._trusted_until

    @property
    def epoch(self) -> int | None:
        """The epoch this replica holds, or None when it does not hold the lease."""
        with self._lock:
            return self._epoch if self._epoch is not None and time.monotonic() < self._trusted_until else None

    def verify(self, epoch: int | None) -> bool:
        """Just before acting: the database still names this replica with ``epoch`` and a lease
        that has not ended (a replica that lost it, or a term that ended, is refused)."""
        if epoch is None or self.epoch != epoch:
            return False
        row = self._read()
        return bool(row and row["holder"] == self.holder and row["epoch"] == epoch and row["left_s"] > 0)

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Take part in the election: one try now (on SQLite, refuse a second live manager), then
        renew or try again every ttl/8 in a thread."""
        self.started = True
        if self.store.dialect == "sqlite":
            self._claim_sqlite()
        else:
            self.tick()
        self._thread = threading.Thread(target=self._run, name="bertctl-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Leave the election and hand the lease over at once (a standby takes it at its next try)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.ttl_s)
        self.release()

    def _run(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            self.tick()

    def tick(self) -> None:
        """Renew the lease held, or try to take it; any failure drops it at once."""
        try:
            held = self._epoch is not None and self._renew()
            if not held:
                self._take()
        except Exception as exc:  # the database is unreachable: stop acting, try again next tick
            if self._epoch is not None:
                log.warning("lease %s: cannot renew (%s); supervision stops", self.name, type(exc).__name__)
            self._drop()

    def release(self) -> None:
        epoch = self._epoch
        self._drop()
        if epoch is None:
            return
        try:
            with self.store.tx() as s:
                s.execute(update(LeaderLease).where(LeaderLease.name == self.name, LeaderLease.holder == self.holder,
                                                    LeaderLease.epoch == epoch).values(expires_at=0.0))
        except Exception as exc:  # it then ends by itself after ttl
            log.warning("lease %s: could not release it (%s)", self.name, type(exc).__name__)

    # -- statements --------------------------------------------------------------------------------

    def _renew(self) -> bool:
        sent = time.monotonic()
        now = self._db_now()
        with self.store.tx() as s:
            self._bound(s)
            done = s.execute(update(LeaderLease).where(
                LeaderLease.name == self.name, LeaderLease.holder == self.holder,
                LeaderLease.epoch == self._epoch, LeaderLease.expires_at > now)
                .values(expires_at=now + self.ttl_s)).rowcount == 1
        if done:
            self._trust(self._epoch, sent)
        else:
            log.warning("lease %s: lost epoch %s (another replica took over); supervision stops",
                        self.name, self._epoch)
            self._drop()
        return done

    def _take(self) -> bool:
        """Take the lease if it is free (ended, never taken, or ours); returns True when taken."""
        sent = time.monotonic()
        now = self._db_now()
        with self.store.tx() as s:
            self._bound(s)
            epoch = s.execute(update(LeaderLease).where(
                LeaderLease.name == self.name, or_(LeaderLease.expires_at <= now, LeaderLease.holder == self.holder))
                .values(holder=self.holder, epoch=LeaderLease.epoch + 1, expires_at=now + self.ttl_s)
                .returning(LeaderLease.epoch)).scalar()
            if epoch is None:
                epoch = s.execute(self._insert(now)).scalar()
        if epoch is None:
            return False
        self._trust(epoch, sent)
        log.info("lease %s: this replica (%s) supervises, epoch %d", self.name, self.holder, epoch)
        return True

    def _insert(self, now: Any):
        values = dict(name=self.name, holder=self.holder, epoch=1, expires_at=now + self.ttl_s)
        insert = pg_insert if self.store.dialect == "postgresql" else sqlite_insert
        return insert(LeaderLease).values(**values).on_conflict_do_nothing(
            index_elements=["name"]).returning(LeaderLease.epoch)

    def _read(self) -> dict[str, Any] | None:
        now = self._db_now()
        with self.store.tx(durable=False) as s:
            found = s.execute(select(LeaderLease.holder, LeaderLease.epoch, LeaderLease.expires_at - now)
                              .where(LeaderLease.name == self.name)).first()
        return None if found is None else {"holder": found[0], "epoch": found[1], "left_s": float(found[2])}

    def _db_now(self) -> Any:
        """The database's clock in epoch seconds, as an SQL expression."""
        if self.store.dialect == "postgresql":
            return cast(extract("epoch", func.clock_timestamp()), Float)
        return (func.julianday("now") - 2440587.5) * 86400.0

    def _bound(self, s: Any) -> None:
        """A statement still waiting after ttl/4 is given up (the lease is then dropped), well before
        the holder's own trust in it ends."""
        if self.store.dialect == "postgresql":
            s.execute(text(f"SET LOCAL statement_timeout = {max(1, int(self.margin_s * 1000))}"))

    # -- local state -------------------------------------------------------------------------------

    def _trust(self, epoch: int, sent: float) -> None:
        with self._lock:
            self._epoch = epoch
            self._trusted_until = sent + self.ttl_s - self.margin_s
            self.ever_held = True

    def _drop(self) -> None:
        with self._lock:
            self._epoch, self._trusted_until = None, 0.0

    # -- SQLite: one replica -----------------------------------------------------------------------

    def _claim_sqlite(self) -> None:
        """Take the lease, or refuse to run beside another live manager on the same SQLite file.

        A holder that is a dead process on this host is taken over at once (a restart after
        kill -9); otherwise the holder is given until its lease ends to show it is alive by
        renewing it."""
        if self._take():
            return
        row = self._read()
        if row and self._dead_here(row["holder"]):
            self._take_from(row["holder"])
            return
        deadline = time.monotonic() + (row["left_s"] if row else 0.0) + self.renew_every_s
        while time.monotonic() < deadline:
            time.sleep(min(self.renew_every_s, 0.5))
            if self._take():
                return
        raise PermanentError(
            f"another bertctl manager ({_describe(row)}) supervises this SQLite database "
            f"({self.store.engine.url.database}); SQLite serves one manager replica. Stop the other "
            "one, or run several replicas on PostgreSQL (--database-url postgresql://user@host/db)")

    def _take_from(self, old_holder: str) -> None:
        with self.store.tx() as s:
            s.execute(update(LeaderLease).where(and_(LeaderLease.name == self.name,
                                                     LeaderLease.holder == old_holder)).values(expires_at=0.0))
        log.info("lease %s: its holder %s is no longer running; taking over", self.name, old_holder)
        if not self._take():
            raise PermanentError("another bertctl manager took this SQLite database's lease while this one "
                                 "started; SQLite serves one manager replica: stop the other one")

    @staticmethod
    def _dead_here(holder: str) -> bool:
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname()[:120] or not pid.isdigit() or int(pid) == os.getpid():
            return False
        return not psutil.pid_exists(int(pid))


def _describe(row: dict[str, Any] | None) -> str:
    if row is None:
        return "unknown"
    host, _, rest = row["holder"].partition(":")
    return f"host {host}, pid {rest.partition(':')[0]}"
