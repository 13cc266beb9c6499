"""Manager replicas as real `bertctl server` processes on one database, for the highly available
manager's tests (test_ha.py) and bench/failover.py; and a fresh PostgreSQL database for them."""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from sqlalchemy import create_engine, text

from tests.manager import procs

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-" + "f" * 40
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
HA_TRAINER = [sys.executable, str(Path(__file__).with_name("ha_trainer.py"))]


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (the servers migrate it), dropped afterwards."""
    name = f"ha_{secrets.token_hex(5)}"
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


class Replica:
    """One `bertctl server` process; every replica of a set shares the data dir (the local backend's
    pid and exit-code files) and the database, and names every replica's URL for the trainers."""

    def __init__(self, data_dir: Path, port: int, database_url: str | None, peers: list[str],
                 lease_ttl_s: float = 8.0, trainer_command: list[str] = HA_TRAINER):
        self.data_dir, self.port, self.database_url = data_dir, port, database_url
        self.peers, self.lease_ttl_s, self.trainer_command = peers, lease_ttl_s, trainer_command
        self.url = f"http://127.0.0.1:{port}"
        self.log = data_dir.parent / f"replica-{port}.log"
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)

    def spawn(self) -> "Replica":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BERTCTL_", "PG"))}
        env.update(BERTCTL_ADMIN_TOKEN=ADMIN, PYTHONPATH=str(ROOT), BERTCTL_TRAINER_COMMAND=shlex.join(self.trainer_command))
        args = ["server", "--port", str(self.port), "--data-dir", str(self.data_dir), "--lease-ttl-s",
                str(self.lease_ttl_s), "--manager-urls", ",".join(self.peers)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def wait_serving(self, timeout_s: float = 60) -> "Replica":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.health() is not None:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"replica {self.url} did not start: {self.log.read_text()[-2000:]}")

    def health(self) -> dict | None:
        try:
            r = httpx.get(f"{self.url}/healthz", timeout=1)
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def supervising(self) -> bool:
        return bool((self.health() or {}).get("supervising"))

    def kill9(self) -> None:
        procs.kill9(self.proc)

    def stop(self) -> None:
        procs.stop(self.proc)

    def close(self) -> None:
        self.stop()
        self.http.close()


def wait_for(predicate, timeout_s: float, poll_s: float = 0.1, what: str = "condition"):
    """Poll until ``predicate()`` is truthy; returns its value (AssertionError naming ``what`` on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def launches(ckpt_root: Path) -> list[tuple[int, int]]:
    """(attempt, pid) of every trainer process that started, from the trainers' own log."""
    path = ckpt_root / "starts.log"
    lines = path.read_text().split() if path.exists() else []
    return [(int(a), int(p)) for a, p in zip(lines[::2], lines[1::2])]
