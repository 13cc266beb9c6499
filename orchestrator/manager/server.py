"""Assemble and run a manager: store (migrated), auth, backends, API and supervisor.

``Manager`` is what `bertctl server` runs in the foreground and what ``EmbeddedManager``
runs in threads. Binding the socket ourselves lets port 0 pick a free port.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import uvicorn

from orchestrator.errors import PermanentError
from orchestrator.manager.api import create_app, metrics_history, ui
from orchestrator.manager.auth import Authenticator, admin_token_from_env, ENV_ADMIN_TOKEN
from orchestrator.manager.backends import base
from orchestrator.manager.backends.evaluation_local import LocalEvaluationLauncher
from orchestrator.manager.backends.local import LocalBackend
from orchestrator.manager.backends.local_ray import LocalRayCluster
from orchestrator.manager.evaluations import EvaluationRunner
from orchestrator.manager.lease import DEFAULT_TTL_S, Lease
from orchestrator.manager.store import Store
from orchestrator.manager.supervisor import Supervisor

ENV_DATABASE_URL = "BERTCTL_DATABASE_URL"
# Backends register themselves when their module is imported (base.register); importing one
# only on demand keeps a plain local manager from loading the Kubernetes client.
BACKEND_MODULES = {"local": "orchestrator.manager.backends.local",
                   "kuberay": "orchestrator.manager.backends.kuberay"}
ENV_DATA_DIR = "BERTCTL_DATA_DIR"
# A different trainer command (e.g. a site wrapper); the manifest path is appended as --manifest.
ENV_TRAINER_COMMAND = "BERTCTL_TRAINER_COMMAND"


def trainer_command_from_env() -> list[str] | None:
    raw = os.environ.get(ENV_TRAINER_COMMAND)
    return shlex.split(raw) if raw else None


def load_backend(name: str, **options) -> base.Backend:
    """The backend called ``name``; an unknown name raises the registry's error listing every valid one."""
    for module in ([BACKEND_MODULES[name]] if name in BACKEND_MODULES else BACKEND_MODULES.values()):
        importlib.import_module(module)
    return base.get_backend(name, **options)


def default_data_dir() -> Path:
    return Path(os.environ.get(ENV_DATA_DIR) or Path.home() / ".bertctl")


@dataclass
class ManagerConfig:
    host: str = "127.0.0.1"
    port: int = 8470
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None          # default: sqlite in data_dir (or BERTCTL_DATABASE_URL)
    admin_token: str | None = None           # default: BERTCTL_ADMIN_TOKEN / _FILE
    backend: str = "local"                   # for new jobs
    trainer_command: Sequence[str] | None = field(default_factory=trainer_command_from_env)
    interval_s: float = 1.0
    stall_grace_s: float = 5.0
    cancel_grace_s: float | None = None
    db_schema: str | None = None             # PostgreSQL schema (tests use a fresh one)
    supervise: bool = True                   # False: API only (benchmarks, a second read-only API)
    warm_ray: bool = True                    # local attempts of the bundled trainer share one Ray head
    lease_ttl_s: float = DEFAULT_TTL_S       # the supervisor's lease (manager/lease.py): takeover after <= this

    def resolved_url(self) -> str:
        url = self.database_url or os.environ.get(ENV_DATABASE_URL)
        return url or f"sqlite:///{Path(self.data_dir).resolve() / 'manager.db'}"


class Manager:
    def __init__(self, cfg: ManagerConfig):
        token = cfg.admin_token or admin_token_from_env()
        if not token:
            raise PermanentError(f"no admin token: set {ENV_ADMIN_TOKEN} (or BERTCTL_ADMIN_TOKEN_FILE) "
                                 "to a random secret, e.g. `openssl rand -hex 32`")
        self.cfg = cfg
        self.backends = self._backends()  # before the store: a bad --backend must not touch the database
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.resolved_url(), cfg.db_schema)
        self.store.migrate()
        self.auth = Authenticator(self.store, token)
        self.app = create_app(self.store, self.auth, backend=cfg.backend)
        self.app.include_router(metrics_history.router)
        ui.install(self.app)  # the dashboard at /ui
        self.sock = _bind(cfg.host, cfg.port)
        self.port = self.sock.getsockname()[1]
        self.lease = Lease(self.store, ttl_s=cfg.lease_ttl_s)
        self.app.state.lease = self.lease  # /healthz says whether this replica supervises
        self.supervisor = Supervisor(self.store, self.backends, self.url, stall_grace_s=cfg.stall_grace_s,
                                     cancel_grace_s=cfg.cancel_grace_s, interval_s=cfg.interval_s,
                                     lease=self.lease)
        self.supervisor.evaluations = EvaluationRunner(self.store, self._evaluation_launchers(), lambda: self.url,
                                                       confirm=self._still_leading)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=2))

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "", "::") else self.cfg.host
        return f"http://{host}:{self.port}"

    def _backends(self) -> dict[str, base.Backend]:
        # A custom trainer command (tests' fakes) may not use Ray at all: it gets no head.
        warm = self.cfg.warm_ray and not self.cfg.trainer_command
        cluster = LocalRayCluster(Path(self.cfg.data_dir) / "ray") if warm else None
        backends: dict[str, base.Backend] = {
            "local": LocalBackend(Path(self.cfg.data_dir), trainer_command=self.cfg.trainer_command,
                                  ray_cluster=cluster)}
        if self.cfg.backend != "local":
            backends[self.cfg.backend] = load_backend(self.cfg.backend)
        return backends

    def _evaluation_launchers(self) -> dict[str, object]:
        """spec.evaluation runs beside training: a niced local process, or a Kubernetes Job on KubeRay."""
        launchers: dict[str, object] = {"local": LocalEvaluationLauncher(Path(self.cfg.data_dir))}
        if "kuberay" in self.backends:
            from orchestrator.manager.backends.evaluation_kube import KubeEvaluationLauncher
            pods_reach = getattr(self.backends["kuberay"], "manager_url", None)  # the manager's Service
            launchers["kuberay"] = KubeEvaluationLauncher(manager_url=pods_reach)
        return launchers

    def _still_leading(self) -> bool:
        """Just before an evaluation starts: the database still says this replica supervises."""
        return not self.lease.started or self.lease.verify(self.lease.epoch)

    def serve_forever(self) -> None:
        """Foreground until SIGINT / SIGTERM, then a clean stop (supervisor, backends, store).

        The HTTP server runs on a thread: on the main thread uvicorn re-raises the SIGTERM it caught
        after its own shutdown, which killed this process before any cleanup ran (a warm Ray head
        outlived every stopped server; found by CI leaving heads behind)."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        thread = ServerThread(self, supervise=self.cfg.supervise, force_close=False).start()
        try:
            while not stop.wait(1.0):
                if not thread.alive():
                    break
        finally:
            thread.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def close_backends(self, force: bool = False) -> None:
        """Release what the backends hold (the warm Ray head). While jobs are active a graceful stop
        leaves it running: their attempts train on, and the next manager adopts both."""
        if self.lease.started and not self.lease.ever_held:
            return  # a standby replica started nothing: what the backends hold is the supervisor's
        if not force and self.store.active_jobs():
            log.info("jobs are active: the local Ray head keeps running for the next manager to adopt")
            return
        for backend in self.backends.values():
            close = getattr(backend, "close", None)
            if close is not None:
                close()


def check_config(cfg: ManagerConfig) -> dict[str, str]:
    """What `bertctl server --check-config` verifies without a database, a socket or a cluster:
    the admin token is set, the backend exists and builds, the database URL parses."""
    from orchestrator.manager.db import normalize_url
    from sqlalchemy.engine import make_url

    if not (cfg.admin_token or admin_token_from_env()):
        raise PermanentError(f"no admin token: set {ENV_ADMIN_TOKEN} (or BERTCTL_ADMIN_TOKEN_FILE)")
    load_backend(cfg.backend, **({"data_dir": cfg.data_dir} if cfg.backend == "local" else {}))
    try:
        dialect = make_url(normalize_url(cfg.resolved_url())).get_backend_name()
    except Exception:  # the message would hold the URL and so maybe a password
        raise PermanentError("cannot parse the database URL; use sqlite:////path/to/db or "
                             "postgresql://user@host:port/db") from None
    if dialect not in ("sqlite", "postgresql"):
        raise PermanentError(f"unsupported database '{dialect}'; use sqlite or postgresql")
    return {"listen": f"{cfg.host}:{cfg.port}", "backend": cfg.backend, "database": dialect,
            "data_dir": str(cfg.data_dir), "supervise": str(cfg.supervise).lower()}


class ServerThread:
    """Runs a Manager's HTTP server and supervisor in background threads (embedded mode, tests)."""

    def __init__(self, manager: Manager, supervise: bool = True, force_close: bool = True):
        self.manager, self.supervise = manager, supervise
        self.force_close = force_close  # embedded: the head goes with the manager
        self._thread = threading.Thread(target=manager.server.run, kwargs={"sockets": [manager.sock]},
                                        name="bertctl-api", daemon=True)

    def start(self, timeout_s: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.manager.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise PermanentError("the embedded manager's HTTP server did not start")
            time.sleep(0.02)
        if self.supervise:
            try:
                self.manager.supervisor.start()
            except BaseException:  # e.g. a second manager on one SQLite file: serve nothing
                self.manager.server.should_exit = True
                self._thread.join(10)
                raise
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.manager.supervisor.stop()
        self.manager.server.should_exit = True
        self._thread.join(10)
        self.manager.close_backends(force=self.force_close)
        self.manager.store.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PermanentError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


logging.getLogger("bertctl.manager").addHandler(logging.NullHandler())
log = logging.getLogger("bertctl.manager.server")
