"""Heartbeats from the trainer to the manager (``contract.Heartbeat`` over HTTP).

Training must never wait on the manager: ``HeartbeatClient.send`` only replaces the pending
heartbeat (newer ones coalesce older ones) and a background thread POSTs it with a short
timeout. Several manager replicas (a highly available manager) are tried in turn: the first URL
is the replica that launched the attempt, ``BERTCTL_MANAGER_URLS`` names the others, and a
replica that does not answer (or answers 5xx) hands the heartbeat to the next one, which is then
kept. Only when none answers is it logged (once) and otherwise ignored. HTTP 409 means a newer
attempt exists: this attempt is fenced, ``fenced`` turns true and the loop stops without
checkpointing. The bearer token lives only in the request header, never in a log line.

One HTTP client (one kept-alive connection) serves every heartbeat of a process. Records the
trainer repeats until they land (its resizes, the checkpoints it skipped) travel only until a
replica answers 200 to a heartbeat carrying them: that answer means they were committed with it
(``Deliveries``), so the manager does not look them up again on every later heartbeat.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from orchestrator.contract import (
    ENV_ATTEMPT, ENV_ATTEMPT_TOKEN, ENV_ATTEMPT_TOKEN_FILE, ENV_JOB_ID, ENV_MANAGER_URL, ENV_MANAGER_URLS,
    Heartbeat, manager_urls,
)
from orchestrator.errors import ManifestError

log = logging.getLogger("bertctl.train.report")
# httpx logs every request at INFO: one line per heartbeat would bury the trainer's own output.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Identity:
    """Who this trainer is, from the environment the manager's backend sets (all optional)."""

    job_id: str
    attempt: int = 1
    manager_url: str | None = None  # one URL, or several comma-separated (replicas, tried in order)
    token: str | None = None

    @classmethod
    def from_env(cls, default_job_id: str, env: dict[str, str] | None = None) -> "Identity":
        env = dict(os.environ if env is None else env)
        raw = env.get(ENV_ATTEMPT, "1") or "1"
        if not raw.isdigit() or int(raw) < 1:
            raise ManifestError([(ENV_ATTEMPT, f"must be a positive integer, got {raw!r}")])
        urls = manager_urls(f"{env.get(ENV_MANAGER_URL, '')},{env.get(ENV_MANAGER_URLS, '')}")
        return cls(job_id=env.get(ENV_JOB_ID) or default_job_id, attempt=int(raw),
                   manager_url=",".join(urls) or None, token=(env.get(ENV_ATTEMPT_TOKEN) or None))

    @staticmethod
    def token_from_env(env: dict[str, str] | None = None) -> str | None:
        """The attempt token by value, or from the file a driver on a shared Ray head wrote."""
        env = dict(os.environ if env is None else env)
        if env.get(ENV_ATTEMPT_TOKEN):
            return env[ENV_ATTEMPT_TOKEN]
        path = env.get(ENV_ATTEMPT_TOKEN_FILE)
        if not path:
            return None
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:  # heartbeats then get 401 and say so; training goes on
            log.warning("cannot read the attempt token file %s: %s", path, exc.strerror)
            return None

    def __repr__(self) -> str:  # keeps the token out of any log line or traceback
        return f"Identity(job_id={self.job_id!r}, attempt={self.attempt}, manager_url={self.manager_url!r})"

    __str__ = __repr__


class Deliveries:
    """The repeated records the manager has taken (a heartbeat carrying them was answered 200):
    resizes by their sequence number, skipped checkpoints by step. Written by the sending thread,
    read as each heartbeat is posted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resizes: set[int] = set()
        self._skipped: set[int] = set()

    def taken(self, beat: Heartbeat) -> None:
        with self._lock:
            self._resizes.update(r.n for r in beat.resizes or [])
            self._skipped.update(sk.step for sk in beat.skipped_checkpoints or [])

    def pending(self, beat: Heartbeat) -> Heartbeat:
        """``beat`` without the records already taken (the same object when nothing is dropped)."""
        if not (beat.resizes or beat.skipped_checkpoints):
            return beat
        with self._lock:
            resizes = [r for r in beat.resizes or [] if r.n not in self._resizes]
            skipped = [sk for sk in beat.skipped_checkpoints or [] if sk.step not in self._skipped]
        return beat.model_copy(update={"resizes": resizes or None, "skipped_checkpoints": skipped or None})


class HeartbeatClient:
    """Sends heartbeats from one process; a no-op when there is no manager URL."""

    def __init__(self, identity: Identity, timeout_s: float = 2.0):
        self.identity = identity
        self._urls = manager_urls(identity.manager_url)
        self._current = 0  # the replica that answered last
        self.timeout_s = timeout_s
        self.fenced = threading.Event()
        self._pending: Heartbeat | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._warned = False
        self._startup_phase: str | None = None
        self._thread: threading.Thread | None = None
        self._http = None  # httpx.Client, made on first use
        self.deliveries = Deliveries()
        if identity.manager_url:
            self._thread = threading.Thread(target=self._run, name="bertctl-heartbeat", daemon=True)
            self._thread.start()

    @property
    def url(self) -> str | None:
        """The heartbeat endpoint on the replica now in use."""
        if not self._urls:
            return None
        return f"{self._urls[self._current]}/v1/jobs/{self.identity.job_id}/heartbeat"

    def send(self, beat: Heartbeat) -> None:
        """Queue a heartbeat; never blocks. A newer one replaces one not yet sent."""
        if self._thread is None:
            return
        with self._cond:
            self._pending = beat
            self._cond.notify()

    def starting(self, phase: str) -> None:
        """Say what the attempt does before its first training step ('starting' status): sent at
        each change of phase only, so a phase repeated by a loop costs nothing."""
        if phase == self._startup_phase:
            return
        self._startup_phase = phase
        log.info("startup phase: %s", phase)
        self.send(Heartbeat(attempt=self.identity.attempt, status="starting", phase=phase))

    def send_final(self, beat: Heartbeat, timeout_s: float = 5.0) -> bool:
        """Deliver the attempt's last word synchronously (bounded); True when the manager took it."""
        self.close()
        if self.url is None:
            return False
        try:
            return self._post(beat, timeout_s) == 200
        finally:
            self._close_http()

    def close(self, wait_s: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(wait_s)
            if not self._thread.is_alive():  # a post still hanging keeps its client until it ends
                self._close_http()

    def _client(self):
        import httpx

        if self._http is None:
            self._http = httpx.Client()
        return self._http

    def _close_http(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            http.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed and self._pending is None:
                    return
                beat, self._pending = self._pending, None
            self._post(beat, self.timeout_s)

    def _post(self, beat: Heartbeat, timeout_s: float) -> int | None:
        """POST to the replica in use; one that does not answer or answers 5xx passes the beat on to
        the next replica (each tried once per beat)."""
        import httpx

        headers = {"Authorization": f"Bearer {self.identity.token}"} if self.identity.token else {}
        headers["Content-Type"] = "application/json"
        beat = self.deliveries.pending(beat)
        body = beat.model_dump_json(exclude_none=True)
        for _ in range(len(self._urls)):
            try:
                resp = self._client().post(self.url, content=body, headers=headers, timeout=timeout_s)
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            else:
                if resp.status_code == 200:
                    self.deliveries.taken(beat)
                if resp.status_code < 500:
                    return self._answered(resp.status_code)
                failure = f"HTTP {resp.status_code}"
            self._next_replica(failure)
        self._warn_once(f"manager unreachable ({failure}); training goes on, heartbeats dropped")
        return None

    def _next_replica(self, failure: str) -> None:
        if len(self._urls) > 1:
            log.info("manager %s did not take a heartbeat (%s); trying %s", self._urls[self._current], failure,
                     self._urls[(self._current + 1) % len(self._urls)])
        self._current = (self._current + 1) % len(self._urls)

    def _answered(self, status_code: int) -> int:
        if status_code == 409:
            if not self.fenced.is_set():
                log.error("manager answered 409: a newer attempt than %d exists; this attempt is fenced "
                          "and stops without checkpointing", self.identity.attempt)
            self.fenced.set()
        elif status_code >= 400:
            self._warn_once(f"manager refused a heartbeat with HTTP {status_code}; training goes on")
        return status_code

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s (url %s)", message, self.url)
