"""Collective checkpoint save / load around a DeepSpeed engine (every rank calls both).

save: rank 0 first refuses a fenced attempt (and broadcasts the outcome with the save's id); then
every rank writes its DeepSpeed shards and RNG state into its own local staging directory, uploads
them into the attempt's directory of the step and hashes them; rank 0 gathers every rank's file
list after that (a barrier), commits the manifest LAST, applies retention, and broadcasts the
outcome so every rank raises the same error or none. A refused or failed save leaves no staging.

load: rank 0 picks the newest committed checkpoint that verifies (downloading and hashing it once)
and broadcasts its step; every other rank materializes it (a no-op for local storage), restores its
DeepSpeed shards and its own RNG state. Nothing is loaded when there is no committed checkpoint.

The two collectives (``broadcast``, ``gather`` of picklable objects) come from ``collectives``:
torch.distributed by default; the unit tier passes fakes that drive several ranks in one process.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import CheckpointError, PermanentError, StaleAttemptError
from orchestrator.train.checkpoint import rng
from orchestrator.train.checkpoint import uploader as up
from orchestrator.train.checkpoint.store import (
    DS_TAG, STATE, CheckpointStore, Committed, FileEntry, Skipped, TrainState, attempt_dir_name,
)

log = logging.getLogger("bertctl.train.checkpoint")


@dataclass(frozen=True)
class SaveResult:
    step: int
    uri: str
    world_size: int
    seconds: float


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class TorchCollectives:
    """Object collectives over torch.distributed's default group; without an initialized group
    (one process) each passes its object through, so a single rank needs no setup."""

    def broadcast(self, obj, src: int = 0):
        dist = _dist()
        if dist is None:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's object, in rank order, on every rank (an all-gather)."""
        dist = _dist()
        if dist is None:
            return [obj]
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out


class CommitFailure(str):
    """Why background checkpoint work did not commit (the same text on every rank); ``permanent``
    when any rank's cause was a permanent error, so the caller raises the type the taxonomy needs."""

    permanent: bool

    def __new__(cls, text: str, permanent: bool) -> "CommitFailure":
        failure = super().__new__(cls, text)
        failure.permanent = permanent
        return failure


@dataclass(frozen=True)
class Resume:
    """A chosen checkpoint: its manifest, a verified local copy and its TrainState."""

    ckpt: Committed
    local: Path
    state: TrainState


class Checkpointer:
    """One rank's side of collective checkpointing: ``save`` (sync or async), ``find`` + ``restore``."""

    def __init__(self, store: CheckpointStore, rank: int, world_size: int, attempt: int, scratch: Path,
                 extra_dirs: dict[str, Path] | None = None, uploader=None, marker_timeout_s: float = 600.0,
                 collectives=None):
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.attempt = attempt
        self.scratch = Path(scratch)
        self.extra_dirs = extra_dirs or {}  # rank 0 copies these (e.g. tokenizer/) into every checkpoint
        self.seconds_total = 0.0  # time training was blocked by checkpoints (the stall)
        self.last: SaveResult | None = None
        # Async upload (checkpoint.async_upload): checkpoint/uploader.AsyncUploader; None = synchronous.
        self.uploader = uploader
        self.marker_timeout_s = marker_timeout_s
        self.commit_cost_s: float | None = None  # last save's full time, write to commit (async too)
        self.stale = False  # rank 0: a background commit was refused because a newer attempt exists
        self.skipped: list[tuple[int, str, str]] = []  # rank 0, by find(): (step, uri, reason)
        self._unloadable_commits: set[int] = set()  # rank 0: committed steps among ``skipped``
        self.collectives = collectives or TorchCollectives()

    # ----- save
    def save(self, engine, state: TrainState) -> SaveResult:
        """Synchronous: returns after the commit. Async: returns once the shards are staged locally."""
        started = time.perf_counter()
        staging = self.scratch / f"save-{state.step:08d}" / f"rank-{self.rank:05d}"
        try:
            save_id = self._stage(engine, state, staging)
            if self.uploader is not None:
                # A snapshotting checkpoint engine (checkpoint/snapshot.py) may still be writing the files.
                drain = getattr(engine.checkpoint_engine, "drain", None)
                return self._save_async(staging, save_id, state, started, drain)
        except BaseException:
            shutil.rmtree(staging.parent, ignore_errors=True)  # a refused or failed save leaves no files
            raise
        return self._save_sync(staging, state, started)

    def _save_sync(self, staging: Path, state: TrainState, started: float) -> SaveResult:
        entries, upload_error = self._upload(staging, state.step)
        gathered = self.collectives.gather((entries, upload_error))
        outcome = self._commit(state, gathered) if self.rank == 0 else None
        outcome = self.collectives.broadcast(outcome)
        shutil.rmtree(staging.parent, ignore_errors=True)
        if outcome[0] != "ok":
            raise _rebuild(outcome)
        result = SaveResult(state.step, self.store.step_uri(state.step), self.world_size,
                            time.perf_counter() - started)
        self.seconds_total += result.seconds
        self.commit_cost_s = result.seconds
        self.last = result
        return result

    def _stage(self, engine, state: TrainState, staging: Path) -> str:
        """Collective: DeepSpeed shards, RNG state (+ state.json, tokenizer on rank 0) in local staging.
        Returns the save's id (the same on every rank)."""
        shutil.rmtree(staging, ignore_errors=True)
        error, save_id = self._prepare_step(state.step)
        if error:
            raise error
        engine.save_checkpoint(str(staging), tag=DS_TAG, save_latest=False)  # collective
        rng.save(staging / "rng" / f"rank-{self.rank:05d}.pt")
        if self.rank == 0:
            (staging / STATE).write_bytes(state.to_json())
            for name, src in self.extra_dirs.items():
                shutil.copytree(src, staging / name, dirs_exist_ok=True)
        return save_id

    # ----- async save: upload in the background, commit when every rank's files landed
    def _save_async(self, staging: Path, save_id: str, state: TrainState, started: float,
                    drain=None) -> SaveResult:
        """No collective runs in the background: each rank writes a marker object when its uploads
        landed (or failed); rank 0's committer waits for every marker, then writes the manifest.
        ``drain`` (when given) returns once the local files are complete; it runs before the upload."""
        step_uri = self.store.step_uri(state.step)
        markers = up.marker_dir(step_uri, attempt_dir_name(self.attempt), save_id)

        def uploads() -> list:
            if drain is not None:
                drain()
            return self.uploader.submit_dir(staging, step_uri, prefix=attempt_dir_name(self.attempt))

        stall = time.perf_counter() - started
        self.uploader.commit_after(
            uploads, lambda files: self._mark_and_commit(state, markers, started, files),
            cleanup=lambda: shutil.rmtree(staging.parent, ignore_errors=True),
            on_error=lambda exc: self._mark_failed(state.step, markers, exc))
        self.seconds_total += stall
        return SaveResult(state.step, step_uri, self.world_size, stall)

    def _mark_and_commit(self, state: TrainState, markers: str, started: float, files: list):
        """Background, after this rank's uploads landed: its marker; on rank 0 then the commit."""
        up.write_rank_marker(self.store.storage, markers, self.rank, files)
        return self._commit_async(state, markers, started) if self.rank == 0 else None

    def _mark_failed(self, step: int, markers: str, exc: BaseException) -> None:
        """Background: tell rank 0 not to wait for this rank (the checkpoint stays uncommitted)."""
        log.warning("checkpoint step %d: rank %d upload failed, it stays uncommitted: %s", step, self.rank, exc)
        try:
            up.write_rank_failure(self.store.storage, markers, self.rank, exc)  # the marker keeps its kind
        except Exception:  # noqa: BLE001 - rank 0 then times out waiting; still no commit
            pass

    def _commit_async(self, state: TrainState, markers: str, started: float) -> SaveResult:
        try:
            files = up.gather_rank_markers(self.store.storage, markers, self.world_size, self.marker_timeout_s)
            entries = [FileEntry(f.name, f.size, f.sha256) for f in files]
            self.store.commit(state.step, self.attempt, self.world_size, entries,
                              extra={"zero_stage": state.zero_stage, "tokens_seen": state.tokens_seen})
        except StaleAttemptError:
            self.stale = True  # the loop stops every rank at the next step (fenced)
            raise
        self.store.apply_retention()
        result = SaveResult(state.step, self.store.step_uri(state.step), self.world_size,
                            time.perf_counter() - started)
        self.commit_cost_s = result.seconds
        self.last = result
        log.info("checkpoint step %d committed in the background (%.2fs after it started)", state.step,
                 result.seconds)
        return result

    def raise_if_stale(self) -> None:
        if self.stale:
            raise StaleAttemptError(f"attempt {self.attempt} is stale: a newer attempt registered; "
                                    "its background commit was refused")

    def wait_committed(self, timeout_s: float | None) -> "CommitFailure | None":
        """Collective: wait (bounded) for this rank's in-flight uploads/commit; None when every rank's
        background work finished without error, else why not (the same answer on every rank)."""
        if self.uploader is None:
            return None
        error = None
        if not self.uploader.flush(timeout_s):
            error = (f"rank {self.rank}: checkpoint upload/commit still running after {timeout_s:.1f} s", False)
        else:
            try:
                self.uploader.raise_if_failed()
            except Exception as exc:  # noqa: BLE001 - every rank must learn the outcome
                error = (f"rank {self.rank}: {type(exc).__name__}: {exc}", isinstance(exc, PermanentError))
        errors = [e for e in self.collectives.gather(error) if e]
        if not errors:
            return None
        return CommitFailure("; ".join(m for m, _ in errors), permanent=any(p for _, p in errors))

    def background_failures(self) -> list[str]:
        """Finished background saves that failed on this rank (logged; training goes on)."""
        if self.uploader is None:
            return []
        try:
            self.uploader.raise_if_failed()  # raises the first failure, forgets every finished one
            return []
        except Exception as exc:  # noqa: BLE001
            return [f"{type(exc).__name__}: {exc}"]

    def _prepare_step(self, step: int) -> tuple[Exception | None, str]:
        """Collective, before anything is written: rank 0's refusal (stale, or a failed clean-up), or
        the save's id, which scopes the async rank markers to this save (uploader.marker_dir)."""
        outcome = self._rank0_prepare(step) if self.rank == 0 else None
        outcome = self.collectives.broadcast(outcome)
        return (None, outcome[2]) if outcome[0] == "ok" else (_rebuild(outcome), "")

    def _rank0_prepare(self, step: int) -> tuple[str, str, str]:
        """Refuse early when stale; clear what would block or pollute this step's commit."""
        try:
            self.raise_if_stale()  # a background commit was fenced: refuse before DeepSpeed writes a shard
            if self.uploader is None:  # async: both checks cost object-store round trips inside the
                # step; the commit re-checks staleness, and leftover files are never read (the
                # manifest names what a checkpoint is, the rank markers are scoped to this save)
                self.store.check_not_stale(self.attempt)
            if step in self._unloadable_commits:
                # A commit this attempt refused to load (corrupt files): it would block the new commit
                # of the same step forever (a step is committed once), and it is worthless.
                log.warning("replacing checkpoint step %d, which failed verification at load", step)
                self.store.storage.delete_prefix(self.store.step_uri(step))
            if self.uploader is None:
                self.store.discard_uncommitted(step)
            return ("ok", "", uuid.uuid4().hex[:16])
        except Exception as exc:  # noqa: BLE001 - every rank must learn the outcome
            return (type(exc).__name__, str(exc), "")

    def _upload(self, staging: Path, step: int) -> tuple[list[FileEntry], str | None]:
        try:
            return self.store.upload_dir(staging, step, self.attempt), None
        except Exception as exc:  # noqa: BLE001 - reported to rank 0, which refuses to commit
            return [], f"rank {self.rank}: upload failed: {exc}"

    def _commit(self, state: TrainState, gathered: list) -> tuple[str, str]:
        errors = [err for _, err in gathered if err]
        if errors:
            return ("CheckpointError", "; ".join(errors) + " - the checkpoint stays uncommitted")
        files = [e for entries, _ in gathered for e in entries]
        try:
            self.store.commit(state.step, self.attempt, self.world_size, files,
                              extra={"zero_stage": state.zero_stage, "tokens_seen": state.tokens_seen})
            self.store.apply_retention()
            return ("ok", "")
        except Exception as exc:  # noqa: BLE001 - every rank must learn the outcome
            return (type(exc).__name__, str(exc))

    # ----- load
    def find(self, max_step: int | None = None) -> "Resume | None":
        """Collective: the newest committed, verified checkpoint, materialized on every rank.

        Rank 0 keeps every newer step it passed over (corrupt, or partial: no manifest) in ``skipped``
        as (step, uri, reason).
        """
        self.skipped, self._unloadable_commits = [], set()
        found = self.store.newest_verified(self.scratch / "load", max_step=max_step,
                                           on_skip=self._record_skip) if self.rank == 0 else None
        choice = self.collectives.broadcast(found[0].step if found else None)
        if choice is None:
            return None
        # Rank 0 verified its copy inside newest_verified: on S3 that was a full download and hash.
        ckpt, local, error = (*found, None) if found else self._materialize_step(choice)
        errors = [e for e in self.collectives.gather(error) if e]
        if errors:
            raise CheckpointError("; ".join(errors))
        return Resume(ckpt, local, self.store.read_state(ckpt, local))

    def _record_skip(self, skipped: Skipped) -> None:
        self.skipped.append((skipped.step, skipped.uri, skipped.reason))
        if skipped.committed:
            self._unloadable_commits.add(skipped.step)

    def restore(self, engine, resume: "Resume", plan=None) -> TrainState:
        """Load the DeepSpeed shards and this rank's RNG state of a checkpoint ``find`` returned.

        ``plan`` (checkpoint/universal.ResumePlan) says where to load from when the world size changed;
        RNG states are per rank and only restored on the same world size.
        """
        ckpt, local, state = resume.ckpt, resume.local, resume.state
        self._load_engine(engine, ckpt, local, state, plan)
        rank_rng = local / ckpt.root / "rng" / f"rank-{self.rank:05d}.pt"
        if rank_rng.is_file() and state.world_size == self.world_size:
            rng.restore(rank_rng)
        log.info("resumed from checkpoint step %d (attempt %d, world size %d)", ckpt.step, ckpt.attempt,
                 state.world_size)
        return state

    def _materialize_step(self, step: int) -> tuple[Committed | None, Path | None, str | None]:
        """A non-zero rank's verified copy of the step rank 0 chose, or why there is none."""
        ckpt = self.store.committed_at(step)
        if ckpt is None:
            return None, None, f"rank {self.rank}: checkpoint step {step} has no readable manifest any more"
        try:
            return ckpt, self.store.materialize(ckpt, self.scratch / "load"), None
        except CheckpointError as exc:
            return None, None, f"rank {self.rank}: {exc}"

    def _load_engine(self, engine, ckpt: Committed, local: Path, state: TrainState, plan=None) -> None:
        if plan is None and state.world_size != self.world_size:
            raise CheckpointError(
                f"checkpoint step {ckpt.step} was written by {state.world_size} workers, this run has "
                f"{self.world_size}; resume through orchestrator.train.checkpoint.prepare_resume")
        load_dir, tag = (plan.load_dir, plan.tag) if plan is not None else (str(local / ckpt.root), DS_TAG)
        load_path, _ = engine.load_checkpoint(load_dir, tag=tag)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint in {load_dir}/{tag}")


_ERRORS = {"CheckpointError": CheckpointError, "StaleAttemptError": StaleAttemptError}


def _rebuild(outcome: tuple[str, str]) -> Exception:
    """The same exception type on every rank (the loop maps types to exit codes)."""
    return _ERRORS.get(outcome[0], CheckpointError)(outcome[1])

