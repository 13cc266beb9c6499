"""Transactional checkpoints on any ``orchestrator.storage`` URI (local path, file://, s3://).

Layout under ``checkpoint.uri``::

    _attempts/attempt-00000003          fencing registry: one object per attempt that started
    step-00000020/
        attempt-00000003/               everything attempt 3 wrote for step 20
            state.json                  TrainState: step, tokens, data cursor, world size, ...
            rng/rank-00000.pt ...       per-rank python / numpy / torch RNG states
            ds/...                      DeepSpeed shards of every rank (engine.save_checkpoint tag "ds")
            tokenizer/...               the tokenizer files, so export needs nothing else
        uploaded/attempt-00000003/<save id>/rank-00001.json
                                        async upload only: rank markers (uploader.py), never loaded
        manifest.json                   THE COMMIT: size + sha256 of every file, written last

Invariants (each has a test in tests/train/test_checkpoint_store.py):
- ``manifest.json`` is written last and only with ``put_if_absent``: a step is committed once.
- Files live under an attempt-scoped directory, so a stale attempt never overwrites files of a
  newer one; and a commit is refused when a newer attempt has registered (StaleAttemptError).
- Loading takes the newest committed checkpoint whose files all verify; every newer step
  passed over (corrupt, or partial: no manifest) is skipped with a logged and reported reason;
  only files the manifest names are read (never a mix).
- Retention keeps ``keep_last`` committed checkpoints and never deletes the newest one.

The collective side (all ranks save, rank 0 commits) is ``Checkpointer`` in
``orchestrator.train.checkpoint.checkpointer``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator import storage as st
from orchestrator.errors import CheckpointError, NotFoundError, StaleAttemptError

log = logging.getLogger("bertctl.train.checkpoint")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.json"
DS_TAG = "ds"
_STEP_RE = re.compile(r"^/step-(\d{8})/")
_ATTEMPT_RE = re.compile(r"attempt-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def attempt_dir_name(attempt: int) -> str:
    return f"attempt-{attempt:08d}"


@dataclass
class TrainState:
    """What a resume needs besides the DeepSpeed shards and RNG files (state.json)."""

    step: int
    tokens_seen: int
    cursor: dict[str, int]
    world_size: int
    attempt: int
    zero_stage: int
    global_batch_size: int
    job_id: str
    lr_scheduler: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    nsp: bool = False
    ledger: str = ""  # the data ledger's value at ``step`` (data/ledger.py); "" in older checkpoints

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "TrainState":
        fields = json.loads(data)
        fields.pop("extra", None)  # an always-empty field that older checkpoints carry (removed as unused)
        return cls(**fields)


@dataclass(frozen=True)
class FileEntry:
    path: str   # relative to the step directory
    size: int
    sha256: str


@dataclass(frozen=True)
class Skipped:
    """A step passed over at load, and why; ``committed`` False: a partial step (no manifest)."""

    step: int
    uri: str
    reason: str
    committed: bool


@dataclass(frozen=True)
class Committed:
    """A committed (not yet verified) checkpoint, as its manifest describes it."""

    step: int
    uri: str                 # the step directory
    attempt: int
    world_size: int
    files: tuple[FileEntry, ...]
    manifest: dict[str, Any]

    @property
    def root(self) -> str:
        """Relative directory holding state.json, rng/ and ds/ of the committing attempt."""
        return self.manifest["root"]


def file_digest(path: str | Path) -> tuple[int, str]:
    """Size and sha256 of a file's bytes, read once (the one hashing rule of checkpoint files)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def local_entries(local_dir: Path, prefix: str) -> list[FileEntry]:
    """Size and sha256 of every file under ``local_dir``, named ``prefix/<relative path>``."""
    return [FileEntry(f"{prefix}/{p.relative_to(local_dir).as_posix()}", *file_digest(p))
            for p in sorted(local_dir.rglob("*")) if p.is_file()]


class CheckpointStore:
    """Storage-side checkpoint logic; no torch, no collectives (unit-testable on its own)."""

    def __init__(self, uri: str, keep_last: int = 3, storage: st.Storage | None = None):
        if keep_last < 1:
            raise CheckpointError("keep_last must be at least 1: the newest checkpoint is never deleted")
        self.uri = uri.rstrip("/")
        self.keep_last = keep_last
        self.storage = storage or st.storage_for(uri)

    # ----- layout
    def step_uri(self, step: int) -> str:
        return st.join(self.uri, step_dir_name(step))

    # ----- fencing
    def register_attempt(self, attempt: int) -> None:
        """Called once when an attempt starts; older attempts can no longer commit."""
        self.storage.write_bytes(st.join(self.uri, "_attempts", attempt_dir_name(attempt)),
                                 json.dumps({"attempt": attempt, "at": time.time()}).encode())

    def newest_attempt(self) -> int:
        found = [int(m.group(1)) for f in self.storage.list_files(st.join(self.uri, "_attempts"))
                 if (m := _ATTEMPT_RE.search(f))]
        return max(found, default=0)

    def check_not_stale(self, attempt: int) -> None:
        newest = self.newest_attempt()
        if newest > attempt:
            raise StaleAttemptError(f"attempt {attempt} is stale: attempt {newest} has started for "
                                    f"{self.uri}; this attempt must stop without committing")

    # ----- upload and commit
    def upload_dir(self, local_dir: Path, step: int, attempt: int) -> list[FileEntry]:
        """Upload every file under ``local_dir`` into the attempt's directory of ``step``."""
        prefix = attempt_dir_name(attempt)
        entries = local_entries(local_dir, prefix)
        for e in entries:
            rel = e.path[len(prefix) + 1:]
            self.storage.upload_file(str(local_dir / rel), st.join(self.step_uri(step), e.path))
        return entries

    def commit(self, step: int, attempt: int, world_size: int, files: list[FileEntry],
               extra: dict[str, Any] | None = None) -> Committed:
        """Write the manifest (the commit). Refused for a stale attempt or an already committed step."""
        self.check_not_stale(attempt)
        if not any(e.path.endswith(f"/{STATE}") for e in files):
            raise CheckpointError(f"step {step}: no {STATE} among the files; refusing to commit")
        manifest = {
            "format_version": FORMAT_VERSION, "step": step, "attempt": attempt, "world_size": world_size,
            "root": attempt_dir_name(attempt), "committed_at": time.time(), **(extra or {}),
            "files": [asdict(e) for e in sorted(files, key=lambda e: e.path)],
        }
        target = st.join(self.step_uri(step), MANIFEST)
        if not self.storage.put_if_absent(target, json.dumps(manifest, indent=1).encode()):
            raise self._commit_conflict(step, attempt)
        log.info("committed checkpoint step %d (attempt %d, %d files)", step, attempt, len(files))
        return self._parse(self.step_uri(step), manifest)

    def _commit_conflict(self, step: int, attempt: int) -> Exception:
        other = self._read_manifest(self.step_uri(step))
        if other and other.attempt > attempt:
            return StaleAttemptError(f"step {step} was already committed by newer attempt {other.attempt}; "
                                     f"attempt {attempt} is stale")
        return CheckpointError(f"step {step} is already committed in {self.uri}; a step is committed once")

    # ----- discovery and verification
    def step_numbers(self) -> list[int]:
        """Every step directory present (committed or not), ascending."""
        steps = {int(m.group(1)) for f in self.storage.list_files(self.uri)
                 if f.startswith(self.uri) and (m := _STEP_RE.match(f[len(self.uri):]))}
        return sorted(steps)

    def committed(self) -> list[Committed]:
        """Committed checkpoints, newest first (manifests parsed, files not yet verified)."""
        out = []
        for step in reversed(self.step_numbers()):
            ckpt = self._read_manifest(self.step_uri(step))
            if ckpt is not None:
                out.append(ckpt)
        return out

    def committed_at(self, step: int) -> Committed | None:
        """The commit of one step (its manifest parsed), None when it has none."""
        return self._read_manifest(self.step_uri(step))

    def _read_manifest(self, step_uri: str) -> Committed | None:
        ckpt, why_not = self._manifest_or_reason(step_uri)
        if why_not.startswith("unreadable"):
            log.warning("skipping %s: %s", step_uri, why_not)
        return ckpt

    def _manifest_or_reason(self, step_uri: str) -> tuple[Committed | None, str]:
        """The parsed commit of a step directory, or why it is none."""
        uri = st.join(step_uri, MANIFEST)
        if not self.storage.exists(uri):
            return None, f"no {MANIFEST}: a partial checkpoint whose save never committed"
        try:
            return self._parse(step_uri, json.loads(self.storage.read_bytes(uri))), ""
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"unreadable {MANIFEST} ({exc})"

    @staticmethod
    def _parse(step_uri: str, m: dict[str, Any]) -> Committed:
        files = tuple(FileEntry(f["path"], int(f["size"]), f["sha256"]) for f in m["files"])
        return Committed(int(m["step"]), step_uri, int(m["attempt"]), int(m["world_size"]), files, m)

    def verify(self, ckpt: Committed, local_dir: Path | None = None) -> str | None:
        """None when every file is present with its size and sha256, else the reason."""
        base = local_dir if local_dir is not None else self._local_step_dir(ckpt)
        for e in ckpt.files:
            path = base / e.path
            if not path.is_file():
                return f"{e.path} is missing"
            if path.stat().st_size != e.size:
                return f"{e.path} has {path.stat().st_size} bytes, the manifest says {e.size}"
            if file_digest(path)[1] != e.sha256:
                return f"{e.path} does not match its sha256"
        return None

    def _local_step_dir(self, ckpt: Committed) -> Path | None:
        return None if st.is_s3(ckpt.uri) else st.local_path(ckpt.uri)

    def materialize(self, ckpt: Committed, scratch: Path) -> Path:
        """A local directory with the checkpoint's files (the step dir itself when local), verified."""
        local = self._local_step_dir(ckpt)
        if local is None:
            local = scratch / step_dir_name(ckpt.step)
            for e in ckpt.files:
                dest = local / e.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.storage.download_file(st.join(ckpt.uri, e.path), str(dest))
                except NotFoundError:
                    pass  # reported by verify() below as missing; access denied and the like end the job
        reason = self.verify(ckpt, local)
        if reason:
            raise CheckpointError(f"checkpoint step {ckpt.step} at {ckpt.uri} failed verification: {reason}")
        from orchestrator.train.checkpoint import safe_load

        safe_load.check_tree(local)  # every file loads as data before anything unpickles it in full
        return local

    def newest_verified(self, scratch: Path, on_skip: Callable[[Skipped], None] | None = None,
                        max_step: int | None = None) -> tuple[Committed, Path] | None:
        """The newest committed checkpoint that verifies, materialized. Every newer step passed over
        (corrupt, unreadable, or partial: no manifest) is logged and given to ``on_skip``."""
        for step in reversed(self.step_numbers()):
            if max_step is not None and step > max_step:
                continue
            ckpt, reason = self._manifest_or_reason(self.step_uri(step))
            if ckpt is not None:
                try:
                    return ckpt, self.materialize(ckpt, scratch)
                except CheckpointError as exc:
                    reason = str(exc)
            log.warning("skipping checkpoint step %d: %s", step, reason)
            if on_skip:
                on_skip(Skipped(step, self.step_uri(step), reason, committed=ckpt is not None))
        return None

    def read_state(self, ckpt: Committed, local_dir: Path) -> TrainState:
        return TrainState.from_json((local_dir / ckpt.root / STATE).read_bytes())

    # ----- retention
    def apply_retention(self) -> list[int]:
        """Delete committed checkpoints beyond keep_last and partial ones older than the newest commit."""
        committed = self.committed()
        if not committed:
            return []
        keep = {c.step for c in committed[: self.keep_last]}
        newest = committed[0].step
        doomed = [s for s in self.step_numbers() if s not in keep and s < newest]
        for s in doomed:
            self.storage.delete_prefix(self.step_uri(s))
        if doomed:
            log.info("retention (keep_last=%d) deleted steps %s", self.keep_last, doomed)
        return doomed

    def discard_uncommitted(self, step: int) -> None:
        """Remove a step directory that has no valid commit, before this attempt writes it again."""
        if self._read_manifest(self.step_uri(step)) is None and step in self.step_numbers():
            self.storage.delete_prefix(self.step_uri(step))
