"""Streaming trainer output from the attempts' log files (the backend keeps them locally)."""

from __future__ import annotations

import time
from typing import Any, Iterator

from orchestrator.manager.phases import TERMINAL, Phase
from orchestrator.manager.store import Store


def stream_logs(store: Store, job_id: str, first: int | None, follow: bool, poll_s: float = 0.3) -> Iterator[bytes]:
    """Attempt logs in order; with follow, wait for new output and new attempts until the job ends."""
    number = first or 1
    while True:
        attempts = {a["number"]: a for a in store.attempts(job_id)}
        att = attempts.get(number)
        if att is None:
            if not follow or _job_over(store, job_id):
                return
            time.sleep(poll_s)
            continue
        if len(attempts) > 1 or first is None:
            yield f"==> attempt {number} <==\n".encode()
        yield from _stream_file(store, job_id, att, follow, poll_s)
        if first is not None and not follow:
            return
        number += 1


def _stream_file(store: Store, job_id: str, att: dict[str, Any], follow: bool, poll_s: float) -> Iterator[bytes]:
    """One attempt's file; with follow, until the attempt ended and its last bytes are out."""
    path = att["log_path"]
    offset = 0
    while True:
        chunk = _read_from(path, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if not follow:
            return
        current = {a["number"]: a for a in store.attempts(job_id)}.get(att["number"]) or att
        if current["state"] == "ended":
            tail = _read_from(current["log_path"] or path, offset)
            if tail:
                yield tail
            return
        path = current["log_path"] or path
        time.sleep(poll_s)


def _read_from(path: str, offset: int, size: int = 1 << 16) -> bytes:
    if not path:
        return b""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)
    except FileNotFoundError:
        return b""


def _job_over(store: Store, job_id: str) -> bool:
    job = store.get_job(job_id)
    return job is None or Phase(job["phase"]) in TERMINAL
