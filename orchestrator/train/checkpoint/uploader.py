"""Asynchronous checkpoint upload: training goes on while shards upload; commit only after all.

The commit (``manifest.json``) is the last write of a checkpoint, so an upload that fails must
mean no commit: ``commit_after`` runs the commit function only when every upload it was given
succeeded; otherwise the checkpoint stays uncommitted and the error is kept for ``flush`` /
``raise_if_failed``. A preemption calls ``flush(time_left)`` so an in-flight commit lands (or
visibly does not) before the process exits.

Across ranks no collective is used in the background (it would interleave with the training
step's collectives): every rank writes a small per-rank marker object listing its uploaded files
once they all landed (``write_rank_marker``), and rank 0's commit function waits for the
markers of every rank (``gather_rank_markers``) before it writes the manifest. Markers are scoped
to one save of one attempt (``marker_dir``), so leftovers of another attempt never count.

    up = AsyncUploader(storage_for, max_workers=4)
    futs = up.submit_dir(staging_dir, step_uri, prefix="attempt-0003")
    up.commit_after(futs, lambda files: store.commit(step, attempt, world, files))
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from orchestrator import storage as st
from orchestrator.errors import CheckpointError, PermanentError, TemporaryError, TransientStorageError
from orchestrator.train.checkpoint.store import file_digest

MARKER_DIR = "uploaded"


@dataclass(frozen=True)
class Uploaded:
    """One file that landed: ``name`` relative to the checkpoint step directory."""

    name: str
    size: int
    sha256: str


class AsyncUploader:
    """A bounded pool of upload threads plus one background committer per checkpoint.

    ``storage_for_uri`` is ``orchestrator.storage.storage_for`` (or a test double of it); it is
    called once per destination so each thread may get its own client.
    """

    def __init__(self, storage_for_uri: Callable[[str], st.Storage] = st.storage_for, max_workers: int = 4):
        self._storage_for = storage_for_uri
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ckpt-upload")
        # A single committer thread: commits land in submission order (step order).
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-commit")
        self._lock = threading.Lock()
        self._uploads: list[Future] = []
        self._commits: list[Future] = []

    # --- uploads --------------------------------------------------------------------------------
    def submit(self, local_path: str, uri: str, name: str | None = None) -> "Future[Uploaded]":
        """Hash then upload one file in the background; the future holds its ``Uploaded`` record."""
        fut = self._pool.submit(self._upload_one, str(local_path), uri, name or Path(local_path).name)
        with self._lock:
            self._uploads.append(fut)
        return fut

    def submit_dir(self, local_dir: str | Path, dest_uri: str, prefix: str = "") -> list[Future]:
        """Every file under ``local_dir`` to ``dest_uri/prefix/<relative path>``, named ``prefix/<rel>``."""
        root = Path(local_dir)
        futures = []
        for p in sorted(root.rglob("*")):
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                name = f"{prefix.strip('/')}/{rel}" if prefix else rel
                futures.append(self.submit(str(p), st.join(dest_uri, name), name))
        return futures

    def _upload_one(self, local_path: str, uri: str, name: str) -> Uploaded:
        # Hash before the upload: the manifest records what we meant to write, and the loader's
        # verification then catches a store that kept something else.
        size, digest = file_digest(local_path)
        self._storage_for(uri).upload_file(local_path, uri)
        return Uploaded(name, size, digest)

    def wait_all(self, futures: list[Future] | None = None, timeout: float | None = None) -> list[Uploaded]:
        """Block until the given (default: all submitted) uploads end; raise if any failed."""
        if futures is None:
            with self._lock:
                futures, self._uploads = self._uploads, []
        done, pending = wait(futures, timeout=timeout)
        if pending:
            raise TransientStorageError(f"{len(pending)} checkpoint upload(s) still running after {timeout} s; "
                                        "the checkpoint stays uncommitted")
        failures = [f.exception() for f in futures if f.exception() is not None]
        if failures:
            raise upload_failure(failures, len(futures))
        return [f.result() for f in futures]

    # --- commit ---------------------------------------------------------------------------------
    def commit_after(self, uploads: list[Future] | Callable[[], list[Future]],
                     commit_fn: Callable[[list[Uploaded]], object],
                     cleanup: Callable[[], None] | None = None,
                     on_error: Callable[[BaseException], None] | None = None) -> Future:
        """In the background: wait for ``uploads``; only if all succeeded call ``commit_fn(files)``.

        ``uploads`` may be a function that starts them, called on the committer thread (the local
        files may still be being written: checkpoint/snapshot.py); if it raises, nothing is committed.
        ``cleanup`` (e.g. removing the local staging directory) runs afterwards either way;
        ``on_error(exc)`` runs when an upload failed (e.g. to tell rank 0 not to wait for this rank).
        The returned future raises what failed (the uploads or the commit).
        """
        fut = self._committer.submit(self._upload_then_commit, uploads, commit_fn, cleanup, on_error)
        if not callable(uploads):
            self._adopt(uploads)
        with self._lock:
            self._commits.append(fut)
        return fut

    def _upload_then_commit(self, uploads, commit_fn, cleanup, on_error):
        """On the committer thread: see ``commit_after``."""
        try:
            try:
                started = uploads() if callable(uploads) else uploads
                self._adopt(started)
                files = self.wait_all(list(started))
            except BaseException as exc:
                if on_error is not None:
                    on_error(exc)
                raise
            return commit_fn(files)
        finally:
            if cleanup is not None:
                cleanup()

    def _adopt(self, uploads: list[Future]) -> None:
        """Uploads a commit waits for are its own: ``wait_all()`` with no argument skips them."""
        with self._lock:
            owned = {id(u) for u in uploads}
            self._uploads = [u for u in self._uploads if id(u) not in owned]

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for f in self._commits if not f.done())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for in-flight commits; True when none is left running."""
        with self._lock:
            commits = list(self._commits)
        _, pending = wait(commits, timeout=timeout)
        return not pending

    def raise_if_failed(self) -> None:
        """Raise the first error of a finished background commit (each error is raised once)."""
        with self._lock:
            failed = [f for f in self._commits if f.done() and f.exception() is not None]
            self._commits = [f for f in self._commits if not f.done()]
        if failed:
            exc = failed[0].exception()
            raise exc

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the threads. Returns whether every commit finished in time."""
        finished = self.flush(timeout)
        self._pool.shutdown(wait=finished, cancel_futures=not finished)
        self._committer.shutdown(wait=finished, cancel_futures=not finished)
        return finished


def upload_failure(failures: list[BaseException], total: int) -> Exception:
    """One error for the failed uploads of a checkpoint, as the taxonomy says: a permanent failure
    (access denied, no such bucket) is a CheckpointError that ends the job at once, naming the file
    and the fix; only temporary ones stay temporary, carrying the longest delay any of them asked for."""
    permanent = [e for e in failures if isinstance(e, PermanentError)]
    shown = permanent or failures
    detail = "; ".join(f"{type(e).__name__}: {e}" for e in shown[:5])
    what = f"{len(failures)} of {total} checkpoint upload(s) failed ({detail}); the checkpoint stays uncommitted"
    if permanent:
        return CheckpointError(f"{what} - the checkpoint URI is not writable: fix checkpoint.uri or its access")
    delays = [e.delay_s for e in failures if isinstance(e, TemporaryError) and e.delay_s is not None]
    return TransientStorageError(what, delay_s=max(delays) if delays else None)


# --- cross-rank completion without collectives ---------------------------------------------------
def marker_dir(step_uri: str, attempt_root: str, save_id: str) -> str:
    """Where the rank markers of one save live: scoped by the attempt and the save's id (rank 0
    broadcasts it while staging), so markers another attempt, or an earlier worker group of this
    attempt, left for the same step are never read nor overwritten. Beside the attempt's directory,
    not inside it: that one holds exactly the files its manifest lists."""
    return st.join(step_uri, MARKER_DIR, attempt_root, save_id)


def rank_marker_uri(markers: str, rank: int) -> str:
    return st.join(markers, f"rank-{rank:05d}.json")


def write_rank_marker(storage: st.Storage, markers: str, rank: int, files: list[Uploaded]) -> None:
    """Written by a rank after all its uploads landed; rank 0's commit waits for every one."""
    body = json.dumps({"rank": rank, "files": [asdict(f) for f in files]}).encode()
    storage.write_bytes(rank_marker_uri(markers, rank), body)


def write_rank_failure(storage: st.Storage, markers: str, rank: int, error: str | BaseException) -> None:
    """Written by a rank whose uploads failed, so rank 0 refuses to commit at once instead of waiting.
    Given the exception, the marker also says whether it was permanent (rank 0 then raises a
    permanent error too); given only its text, the failure counts as temporary."""
    body = {"rank": rank, "error": (error if isinstance(error, str) else f"{type(error).__name__}: {error}")[:500],
            "permanent": isinstance(error, PermanentError)}
    storage.write_bytes(rank_marker_uri(markers, rank), json.dumps(body).encode())


def gather_rank_markers(storage: st.Storage, markers: str, world_size: int, timeout_s: float,
                        poll_s: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> list[Uploaded]:
    """Every rank's uploaded files, once all ``world_size`` markers exist; else why not: a permanent
    CheckpointError when a rank failed permanently, a TransientStorageError otherwise (or on timeout)."""
    deadline = time.monotonic() + timeout_s
    found: dict[int, list[Uploaded]] = {}
    while True:
        for rank in range(world_size):
            uri = rank_marker_uri(markers, rank)
            if rank not in found and storage.exists(uri):
                marker = json.loads(storage.read_bytes(uri))
                if marker.get("error"):
                    raise _rank_failed(markers, rank, marker)
                found[rank] = [Uploaded(**f) for f in marker["files"]]
        if len(found) == world_size:
            return [f for rank in range(world_size) for f in found[rank]]
        if time.monotonic() >= deadline:
            missing = sorted(set(range(world_size)) - set(found))
            raise TransientStorageError(f"{markers}: rank(s) {missing} did not finish uploading within {timeout_s} s; "
                                        "the checkpoint stays uncommitted and the previous one is used on resume")
        sleep(poll_s)


def _rank_failed(markers: str, rank: int, marker: dict) -> Exception:
    what = f"{markers}: rank {rank} failed to upload its files ({marker['error']}); the checkpoint stays uncommitted"
    if marker.get("permanent"):
        return CheckpointError(f"{what} - fix checkpoint.uri or its access")
    return TransientStorageError(what)
