"""Engines for the store: SQLite (WAL, default) or PostgreSQL from a URL, plus migrations.

SQLite transactions start with BEGIN IMMEDIATE: a deferred transaction that reads and then
writes can fail at once with "database is locked" when another writer committed in between;
taking the write lock up front makes every state change wait its turn instead.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from orchestrator.errors import PermanentError

_MIGRATIONS = str(Path(__file__).with_name("migrations"))


def normalize_url(url: str) -> str:
    """Plain postgres:// URLs go through psycopg 3 (the only PostgreSQL driver installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, schema: str | None = None) -> Engine:
    try:
        parsed = make_url(normalize_url(url))
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL inside: keep it out
        raise PermanentError(f"cannot parse the database URL ({type(exc).__name__}); "
                             "use sqlite:////path/to/db or postgresql://user@host:port/db") from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite(parsed)
    if parsed.get_backend_name() == "postgresql":
        # Commits default to not waiting for the WAL flush; every transaction that changes state
        # turns it back on (Store.tx durable=True), so only progress-only heartbeats skip the wait.
        options = "-csynchronous_commit=off" + (f" -csearch_path={schema}" if schema else "")
        # No pre-ping (a round trip per checkout); a dropped connection fails one request, which
        # its caller retries (heartbeats repeat, the supervisor loops), and is then replaced.
        # A bounded connect: the supervisor's lease (lease.py) must learn soon that the server is gone.
        return create_engine(parsed, pool_size=10, max_overflow=10, pool_recycle=600,
                             connect_args={"options": options, "connect_timeout": 10})
    raise PermanentError(f"unsupported database '{parsed.get_backend_name()}'; use sqlite or postgresql")


def _sqlite(parsed) -> Engine:
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


MIGRATION_LOCK_KEY = 0x6265727463746C  # "bertctl": the advisory lock that serialises migrations


def migrate(engine: Engine, schema: str | None = None) -> None:
    """Bring the schema to the newest revision (idempotent; runs at every manager start)."""
    cfg = Config()
    cfg.set_main_option("script_location", _MIGRATIONS)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Replicas started together on an empty database would race to create the same tables;
            # the first migrates, the others wait here and find the schema at head. Released at commit.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        if schema and engine.dialect.name == "postgresql":
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        cfg.attributes["connection"] = conn
        cfg.attributes["schema"] = schema
        command.upgrade(cfg, "head")
