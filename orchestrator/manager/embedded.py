"""An in-process manager for `bertctl run` and tests: loopback port, SQLite (temporary or in a given
data dir), local backend. A given data dir is kept (store + attempt logs) so a user can read them later.

    with EmbeddedManager() as m:
        client = httpx.Client(base_url=m.url, headers={"Authorization": f"Bearer {m.token}"})
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from orchestrator.manager.auth import new_token
from orchestrator.manager.server import Manager, ManagerConfig, ServerThread, trainer_command_from_env


class EmbeddedManager:
    """``trainer_command`` is used as given (tests' fakes). ``default_trainer_command`` is the caller's
    choice (`bertctl run`'s trainer with its metrics file) that BERTCTL_TRAINER_COMMAND replaces whole,
    as it does for `bertctl server`. With neither, attempts run the bundled trainer."""

    def __init__(self, data_dir: str | Path | None = None, trainer_command: Sequence[str] | None = None,
                 interval_s: float = 0.5, database_url: str | None = None, *,
                 default_trainer_command: Sequence[str] | None = None, **config):
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="bertctl-embedded-"))
        self.token = new_token()
        if trainer_command is None and default_trainer_command is not None:
            trainer_command = trainer_command_from_env() or list(default_trainer_command)
        self.cfg = ManagerConfig(host="127.0.0.1", port=0, data_dir=self.data_dir, admin_token=self.token,
                                 database_url=database_url or f"sqlite:///{self.data_dir / 'manager.db'}",
                                 trainer_command=trainer_command, interval_s=interval_s, **config)
        self.manager: Manager | None = None
        self._thread: ServerThread | None = None

    @property
    def url(self) -> str:
        if self.manager is None:
            raise RuntimeError("EmbeddedManager is not started; use it as a context manager or call start()")
        return self.manager.url

    def start(self) -> "EmbeddedManager":
        self.manager = Manager(self.cfg)
        self._thread = ServerThread(self.manager).start()
        return self

    def stop(self, cancel_jobs: bool = True, timeout_s: float = 60.0) -> None:
        """Stop the manager; by default cancel its unfinished jobs first so nothing keeps running."""
        if self._thread and cancel_jobs:
            self.cancel_active(timeout_s)
        if self._thread:
            self._thread.stop()
            self._thread = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def cancel_active(self, timeout_s: float = 60.0) -> None:
        """Cancel every unfinished job and wait until they have ended. A persistent data dir may hold
        jobs of an earlier embedded manager that died: call this before submitting so none of them
        is adopted and trains beside the new job."""
        store = self.manager.store
        for job, _ in store.active_jobs():
            store.request_cancel(job["id"], time.time())
        deadline = time.monotonic() + timeout_s
        while store.active_jobs() and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> "EmbeddedManager":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
