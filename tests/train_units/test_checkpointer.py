"""Checkpointer (train/checkpoint/checkpointer.py) on fakes: sync and async save, commit last,
resume selection, retention, fencing, failed saves, world-size change. Fast, CPU only.

No torch.distributed (the Checkpointer then acts as a single rank: its collectives pass objects
through), no DeepSpeed engine (``FakeEngine`` writes small real files), no Ray. Storage is the real
``LocalStorage`` on tmp_path, wrapped by ``FakeStorage`` where writes must be recorded, failed or held.
Several ranks are only combined in async mode, which uses no collectives in the background (rank
markers instead); their staging broadcast goes through ``RelayGroup`` (ckpt_fakes.py).
Waits go through the Checkpointer's own completion API (``wait_committed``), never a sleep.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

from orchestrator.errors import CheckpointError, NotFoundError, StaleAttemptError, StorageError, TransientStorageError
from orchestrator.train.checkpoint import (
    DS_TAG, MANIFEST, AsyncUploader, Checkpointer, CheckpointStore, ResumePlan, TrainState, prepare_resume,
)
from orchestrator.train.checkpoint import store as store_module
from orchestrator.train.checkpoint import universal
from tests.train_units.ckpt_fakes import MODEL_FILE, FakeEngine, FakeStorage, RelayGroup, optim_file, tree

WAIT_S = 60.0  # a bound so a broken commit fails the test instead of hanging it; never reached


def _state(step: int, world_size: int = 1, attempt: int = 1) -> TrainState:
    return TrainState(step=step, tokens_seen=step * 1024, cursor={"epoch": 0, "sample": step * 16},
                      world_size=world_size, attempt=attempt, zero_stage=2, global_batch_size=16, job_id="job-1")


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "ckpt"


@pytest.fixture
def storage() -> FakeStorage:
    return FakeStorage()


@pytest.fixture
def store(root, storage) -> CheckpointStore:
    return CheckpointStore(str(root), keep_last=3, storage=storage)


@pytest.fixture
def uploaders():
    """Makes AsyncUploaders over a given storage; closes them after the test."""
    made = []

    def make(up_storage) -> AsyncUploader:
        up = AsyncUploader(lambda uri: up_storage, max_workers=2)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close(WAIT_S)


@pytest.fixture
def peers() -> RelayGroup:
    """Several ranks of one worker group in this process, async mode only (its background work uses no
    collective); rank 0 saves first and its broadcast (refusal or the save's id) reaches the others."""
    return RelayGroup()


def _ckpter(store, tmp_path, *, attempt=1, rank=0, world_size=1, **kw) -> Checkpointer:
    return Checkpointer(store, rank, world_size, attempt, tmp_path / f"scratch-a{attempt}-r{rank}", **kw)


def _manifest(root: Path, step: int) -> dict:
    return json.loads((root / f"step-{step:08d}" / MANIFEST).read_text())


def _on_disk(root: Path, step: int, attempt: int) -> dict[str, tuple[int, str]]:
    """Every file the attempt wrote for the step, hashed here (not by the code under test)."""
    base = root / f"step-{step:08d}"
    adir = base / f"attempt-{attempt:08d}"
    return {p.relative_to(base).as_posix(): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(adir.rglob("*")) if p.is_file()}


def _listed(manifest: dict) -> dict[str, tuple[int, str]]:
    return {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]}


def _committed_steps(store) -> list[int]:
    return [c.step for c in store.committed()]


# ----- sync save ----------------------------------------------------------------------------------

def test_sync_save_commits_manifest_last_listing_every_file(store, storage, root, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    ckpter = _ckpter(store, tmp_path, extra_dirs={"tokenizer": tok})
    engine = FakeEngine(weights=b"step10")

    result = ckpter.save(engine, _state(10))

    assert (result.step, result.uri, result.world_size) == (10, store.step_uri(10), 1)
    assert ckpter.last == result and _committed_steps(store) == [10]
    assert engine.saves == [{"save_dir": engine.saves[0]["save_dir"], "tag": DS_TAG, "save_latest": False}]
    on_disk = _on_disk(root, 10, 1)
    assert set(on_disk) == {f"attempt-00000001/ds/{MODEL_FILE}", f"attempt-00000001/ds/{optim_file(0)}",
                            "attempt-00000001/rng/rank-00000.pt", "attempt-00000001/state.json",
                            "attempt-00000001/tokenizer/vocab.txt"}
    manifest = _manifest(root, 10)
    assert _listed(manifest) == on_disk  # every file, with its size and sha256
    assert (manifest["step"], manifest["attempt"], manifest["world_size"], manifest["root"]) == (
        10, 1, 1, "attempt-00000001")
    assert (manifest["zero_stage"], manifest["tokens_seen"]) == (2, 10 * 1024)
    # The commit is the last write into the step directory, and the only conditional one.
    step_ops = [(op, uri) for op, uri in storage.ops if "/step-00000010/" in uri]
    assert step_ops[-1] == ("put_if_absent", f"{store.step_uri(10)}/{MANIFEST}")
    assert [op for op, _ in step_ops[:-1]] == ["upload_file"] * len(on_disk)
    assert not (tmp_path / "scratch-a1-r0" / "save-00000010").exists()  # staging removed
    found = ckpter.find()
    assert found.state == _state(10) and ckpter.skipped == []


def test_each_sync_save_becomes_the_newest_commit(store, tmp_path):
    ckpter = _ckpter(store, tmp_path)
    for step in (4, 8, 12):
        ckpter.save(FakeEngine(weights=f"s{step}".encode()), _state(step))
        assert _committed_steps(store)[0] == step and ckpter.last.step == step
    assert ckpter.seconds_total > 0 and ckpter.commit_cost_s is not None


# ----- async save ---------------------------------------------------------------------------------

def test_async_save_returns_before_the_upload_and_commits_once_it_drains(store, root, tmp_path, uploaders):
    slow = FakeStorage()
    slow.hold_uploads()  # the object store answers nothing until released
    ckpter = _ckpter(store, tmp_path, uploader=uploaders(slow))
    engine = FakeEngine(weights=b"async", deferred=True)  # files appear only when drained

    result = ckpter.save(engine, _state(10))

    assert (result.step, result.uri) == (10, store.step_uri(10))
    assert slow.held.wait(WAIT_S)  # an upload is in flight, held by the store...
    assert _committed_steps(store) == [] and ckpter.last is None  # ...and nothing is committed
    still_running = ckpter.wait_committed(0)
    assert "still running" in still_running and not still_running.permanent  # worth another attempt
    slow.release()
    assert ckpter.wait_committed(WAIT_S) is None
    assert _committed_steps(store) == [10] and ckpter.last.step == 10 and ckpter.commit_cost_s is not None
    assert engine.checkpoint_engine.drains == 1  # the writer drained before the files were listed
    on_disk = _on_disk(root, 10, 1)
    assert f"attempt-00000001/ds/{MODEL_FILE}" in on_disk and _listed(_manifest(root, 10)) == on_disk
    assert not (tmp_path / "scratch-a1-r0" / "save-00000010").exists()  # staging removed after the upload


def test_async_commit_waits_for_every_rank(store, root, tmp_path, uploaders, peers):
    ranks = [_ckpter(store, tmp_path, rank=r, world_size=2, uploader=uploaders(FakeStorage()),
                     marker_timeout_s=WAIT_S, collectives=peers.member(r)) for r in (0, 1)]
    engines = [FakeEngine(rank=r, weights=b"two") for r in (0, 1)]

    ranks[0].save(engines[0], _state(10, world_size=2))
    assert _committed_steps(store) == []  # rank 1 has not uploaded: rank 0 cannot commit
    ranks[1].save(engines[1], _state(10, world_size=2))

    assert ranks[1].wait_committed(WAIT_S) is None and ranks[0].wait_committed(WAIT_S) is None
    assert _committed_steps(store) == [10]
    listed = _listed(_manifest(root, 10))
    assert {f"attempt-00000001/ds/{optim_file(0)}", f"attempt-00000001/ds/{optim_file(1)}",
            "attempt-00000001/rng/rank-00000.pt", "attempt-00000001/rng/rank-00001.pt"} <= set(listed)
    assert listed == _on_disk(root, 10, 1) and _manifest(root, 10)["world_size"] == 2
    assert ranks[1].last is None and ranks[0].last.step == 10  # rank 0 is the committer


def test_async_commit_without_every_rank_stays_uncommitted(store, root, tmp_path, uploaders):
    ckpter = _ckpter(store, tmp_path, world_size=2, uploader=uploaders(FakeStorage()), marker_timeout_s=0)
    ckpter.save(FakeEngine(), _state(10, world_size=2))  # rank 1 never reports

    failed = ckpter.wait_committed(WAIT_S)

    assert "rank(s) [1] did not finish uploading" in failed
    assert _committed_steps(store) == [] and not (root / "step-00000010" / MANIFEST).exists()


# ----- resume selection ---------------------------------------------------------------------------

def _commit_steps(store, tmp_path, steps, attempt=1):
    ckpter = _ckpter(store, tmp_path, attempt=attempt)
    for step in steps:
        ckpter.save(FakeEngine(weights=f"weights-{step}".encode()), _state(step, attempt=attempt))
    return ckpter


def test_resume_takes_newest_verified_and_reports_a_corrupt_and_a_partial_one(store, root, tmp_path, caplog):
    ckpter = _ckpter(store, tmp_path)
    ckpter.save(FakeEngine(weights=b"weights-10"), _state(10))
    random.seed(1234)
    torch.manual_seed(1234)
    ckpter.save(FakeEngine(weights=b"weights-20"), _state(20))
    expected_py, expected_torch = random.random(), torch.rand(3)  # the streams the checkpoint holds
    ckpter.save(FakeEngine(weights=b"weights-30"), _state(30))
    shard = root / "step-00000030" / "attempt-00000001" / "ds" / MODEL_FILE
    data = bytearray(shard.read_bytes())
    data[3] ^= 0x01  # same size, other content
    shard.write_bytes(bytes(data))
    partial = root / "step-00000040" / "attempt-00000001" / "state.json"  # a crash before the commit
    partial.parent.mkdir(parents=True)
    partial.write_bytes(_state(40).to_json())

    loader = _ckpter(store, tmp_path, attempt=2)
    with caplog.at_level("WARNING", logger="bertctl.train.checkpoint"):
        resume = loader.find()

    assert resume.ckpt.step == 20 and resume.state == _state(20)
    # Newest first, each passed over and said so: the partial (no commit) and the corrupt commit.
    assert [(s, u) for s, u, _ in loader.skipped] == [(40, store.step_uri(40)), (30, store.step_uri(30))]
    assert f"no {MANIFEST}: a partial checkpoint" in loader.skipped[0][2]
    assert f"ds/{MODEL_FILE} does not match its sha256" in loader.skipped[1][2]
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("skipping checkpoint step 40: no manifest.json") for m in logged)
    assert any(m.startswith("skipping checkpoint step 30: ") and "sha256" in m for m in logged)
    random.seed(0)
    torch.manual_seed(0)
    engine = FakeEngine()
    assert loader.restore(engine, resume) == _state(20)
    assert engine.loads == [{"load_dir": str(resume.local / "attempt-00000001"), "tag": DS_TAG}]
    assert engine.loaded[MODEL_FILE] == b"model " + b"weights-20" * 100
    assert random.random() == expected_py and torch.equal(torch.rand(3), expected_torch)  # RNG restored


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_resume_skips_a_checkpoint_with_a_short_or_missing_file(store, root, tmp_path, damage):
    _commit_steps(store, tmp_path, (10, 20))
    rng_file = root / "step-00000020" / "attempt-00000001" / "rng" / "rank-00000.pt"
    if damage == "truncate":
        rng_file.write_bytes(rng_file.read_bytes()[:-1])
    else:
        rng_file.unlink()
    loader = _ckpter(store, tmp_path, attempt=2)

    resume = loader.find()

    assert resume.ckpt.step == 10 and loader.restore(FakeEngine(), resume).step == 10
    reason = {"truncate": "bytes, the manifest says", "delete": "is missing"}[damage]
    assert [s for s, _, _ in loader.skipped] == [20] and reason in loader.skipped[0][2]


def test_resume_respects_max_step_and_none_when_nothing_is_committed(store, tmp_path):
    loader = _ckpter(store, tmp_path, attempt=2)
    assert loader.find() is None and loader.skipped == []
    _commit_steps(store, tmp_path, (10, 20))
    assert loader.find(max_step=15).ckpt.step == 10 and loader.skipped == []


def test_resume_hashes_the_chosen_checkpoint_once(store, root, tmp_path, monkeypatch):
    _commit_steps(store, tmp_path, (10, 20))
    hashed = []
    real_digest = store_module.file_digest

    def counting_digest(path):
        hashed.append(Path(path).relative_to(root / "step-00000020").as_posix())
        return real_digest(path)

    monkeypatch.setattr(store_module, "file_digest", counting_digest)
    resume = _ckpter(store, tmp_path, attempt=2).find()

    assert resume.ckpt.step == 20
    # On S3 each hash follows a download: rank 0 reads the chosen checkpoint once, not twice.
    assert sorted(hashed) == sorted(e.path for e in resume.ckpt.files)


def test_every_rank_finds_the_checkpoint_rank_0_chose(store, tmp_path, peers):
    _commit_steps(store, tmp_path, (10, 20))
    ranks = [_ckpter(store, tmp_path, attempt=2, rank=r, world_size=1, collectives=peers.member(r))
             for r in (0, 1)]
    found = [c.find(max_step=15) for c in ranks]  # rank 0 first: it chooses, rank 1 follows
    assert [f.ckpt.step for f in found] == [10, 10] and found[1].state == found[0].state
    assert ranks[1].skipped == []  # only rank 0 looks at (and reports) what it passed over


def test_a_commit_beside_markers_of_the_earlier_layout_still_loads(store, root, tmp_path):
    # Async saves before rank markers were scoped per attempt and save left step-N/uploaded/rank-K.json;
    # the manifest format did not change, so those commits still verify and load.
    _commit_steps(store, tmp_path, (10,))
    old_marker = root / "step-00000010" / "uploaded" / "rank-00000.json"
    old_marker.parent.mkdir()
    old_marker.write_text(json.dumps({"rank": 0, "files": []}))
    loader = _ckpter(store, tmp_path, attempt=2)
    engine = FakeEngine()
    assert loader.restore(engine, loader.find()).step == 10 and loader.skipped == []
    assert engine.loaded[MODEL_FILE] == b"model " + b"weights-10" * 100


def test_a_step_that_failed_verification_is_replaced_when_saved_again(store, root, tmp_path):
    _commit_steps(store, tmp_path, (10, 20))
    (root / "step-00000020" / "attempt-00000001" / "state.json").write_bytes(b"{}")
    retry = _ckpter(store, tmp_path, attempt=2)
    assert retry.find().ckpt.step == 10 and [s for s, _, _ in retry.skipped] == [20]

    retry.save(FakeEngine(weights=b"again"), _state(20, attempt=2))  # a step is committed once: unless skipped

    assert store.committed()[0].attempt == 2 and store.committed()[0].step == 20
    assert not (root / "step-00000020" / "attempt-00000001").exists()
    assert _listed(_manifest(root, 20)) == _on_disk(root, 20, 2)
    assert _ckpter(store, tmp_path, attempt=3).find().ckpt.step == 20


# ----- retention ----------------------------------------------------------------------------------

def test_retention_keeps_the_newest_commits_and_deletes_only_older_steps(root, storage, tmp_path):
    store = CheckpointStore(str(root), keep_last=2, storage=storage)
    ckpter = _commit_steps(store, tmp_path, (10, 20))
    storage.fail("upload_file", "/step-00000030/attempt-00000001/state.json")
    with pytest.raises(CheckpointError):
        ckpter.save(FakeEngine(), _state(30))  # leaves a partial step 30 behind
    assert (root / "step-00000030").is_dir()
    other = root / "step-00000050" / "attempt-00000002" / "state.json"  # newer, uncommitted: not ours to delete
    other.parent.mkdir(parents=True)
    other.write_bytes(b"{}")

    ckpter.save(FakeEngine(), _state(40))

    assert store.step_numbers() == [20, 40, 50]
    assert _committed_steps(store) == [40, 20]
    assert ckpter.find().ckpt.step == 40


def test_keep_last_one_keeps_only_the_newest_commit(root, tmp_path):
    store = CheckpointStore(str(root), keep_last=1)
    ckpter = _ckpter(store, tmp_path)
    for step in (10, 20, 30):
        ckpter.save(FakeEngine(), _state(step))
        assert store.step_numbers() == [step]  # never zero checkpoints, never more than one


def test_async_commit_applies_retention(root, tmp_path, uploaders):
    store = CheckpointStore(str(root), keep_last=1)
    ckpter = _ckpter(store, tmp_path, uploader=uploaders(FakeStorage()))
    for step in (10, 20):
        ckpter.save(FakeEngine(deferred=True), _state(step))
        assert ckpter.wait_committed(WAIT_S) is None
    assert store.step_numbers() == [20] and _committed_steps(store) == [20]


# ----- fencing ------------------------------------------------------------------------------------

def test_stale_sync_attempt_is_refused_before_writing_anything(store, root, tmp_path):
    store.register_attempt(1)
    store.register_attempt(2)
    _commit_steps(store, tmp_path, (10,), attempt=2)
    before = tree(root)
    stale = _ckpter(store, tmp_path, attempt=1)
    engine = FakeEngine(weights=b"stale")

    for step in (10, 20):
        with pytest.raises(StaleAttemptError, match="attempt 1 is stale"):
            stale.save(engine, _state(step))

    assert engine.saves == []  # refused before DeepSpeed wrote a shard
    assert tree(root) == before and store.step_numbers() == [10]
    assert stale.last is None


def test_stale_async_attempt_cannot_commit_nor_touch_the_newer_attempt(store, root, tmp_path, uploaders):
    store.register_attempt(1)
    old = _ckpter(store, tmp_path, attempt=1, uploader=uploaders(FakeStorage()))
    old.save(FakeEngine(deferred=True), _state(10))
    assert old.wait_committed(WAIT_S) is None
    store.register_attempt(2)  # the manager started attempt 2 while attempt 1 still runs
    _commit_steps(store, tmp_path, (20,), attempt=2)
    newer = {k: v for k, v in tree(root).items() if "attempt-00000002" in k or k.endswith(MANIFEST)}

    old.save(FakeEngine(weights=b"stale", deferred=True), _state(20))  # async: refused at the commit
    failed = old.wait_committed(WAIT_S)

    assert "StaleAttemptError" in failed and old.stale
    assert [(c.step, c.attempt) for c in store.committed()] == [(20, 2), (10, 1)]
    after = tree(root)
    assert {k: v for k, v in after.items() if "attempt-00000002" in k or k.endswith(MANIFEST)} == newer
    assert old.last.step == 10
    with pytest.raises(StaleAttemptError, match="attempt 1 is stale"):
        old.save(FakeEngine(deferred=True), _state(30))  # fenced: the next save is refused at once
    assert old.uploader.flush(WAIT_S) and not (root / "step-00000030").exists()


def test_fenced_async_save_is_refused_before_staging_and_leaves_no_files(store, tmp_path, uploaders):
    store.register_attempt(1)
    ckpter = _ckpter(store, tmp_path, attempt=1, uploader=uploaders(FakeStorage()))
    store.register_attempt(2)
    ckpter.save(FakeEngine(deferred=True), _state(10))
    assert "StaleAttemptError" in ckpter.wait_committed(WAIT_S)  # the background commit was fenced
    engine = FakeEngine(deferred=True)

    with pytest.raises(StaleAttemptError, match="attempt 1 is stale"):
        ckpter.save(engine, _state(20))

    assert engine.saves == [] and engine.checkpoint_engine.pending == []  # no DeepSpeed save ran
    assert tree(ckpter.scratch) == {}  # and nothing is left in staging


def test_a_failed_local_save_leaves_no_staging(store, tmp_path):
    class DiskFull(FakeEngine):
        def save_checkpoint(self, save_dir, tag=None, **kw):
            super().save_checkpoint(save_dir, tag=tag, **kw)  # some shards written, then the disk is full
            raise OSError(28, "No space left on device")

    ckpter = _ckpter(store, tmp_path)
    with pytest.raises(OSError, match="No space left"):
        ckpter.save(DiskFull(), _state(10))
    assert tree(ckpter.scratch) == {} and _committed_steps(store) == []


def _async_rank(store, tmp_path, group, attempt, rank, up_storage, uploaders, **kw) -> Checkpointer:
    return _ckpter(store, tmp_path, attempt=attempt, rank=rank, world_size=2, uploader=uploaders(up_storage),
                   collectives=group.member(rank), **kw)


def _attempt_one_dies_at_step_20(store, tmp_path, uploaders, rank1_fails: bool) -> None:
    """Attempt 1, 2 ranks, step 20: rank 0's uploads fail (it never commits); rank 1 leaves a marker."""
    store.register_attempt(1)
    group, failing = RelayGroup(), FakeStorage()
    failing.fail("upload_file", "/step-00000020/")
    rank1_storage = failing if rank1_fails else FakeStorage()
    ranks = [_async_rank(store, tmp_path, group, 1, r, s, uploaders, marker_timeout_s=0)
             for r, s in ((0, failing), (1, rank1_storage))]
    for r, c in enumerate(ranks):
        c.save(FakeEngine(rank=r, weights=b"attempt-1"), _state(20, world_size=2, attempt=1))
    assert ranks[0].wait_committed(WAIT_S) and _committed_steps(store) == []


@pytest.mark.parametrize("leftover", ["uploaded", "failed"])
def test_markers_of_an_earlier_attempt_never_decide_a_later_commit(store, root, tmp_path, uploaders, leftover):
    _attempt_one_dies_at_step_20(store, tmp_path, uploaders, rank1_fails=leftover == "failed")
    store.register_attempt(2)
    first = _async_rank(store, tmp_path, RelayGroup(), 2, 0, FakeStorage(), uploaders, marker_timeout_s=0)

    first.save(FakeEngine(rank=0, weights=b"attempt-2"), _state(20, world_size=2, attempt=2))
    failed = first.wait_committed(WAIT_S)

    # Attempt 2's rank 1 has not uploaded: neither attempt 1's marker of rank 1 (files of another
    # attempt) nor its failure marker may decide attempt 2's commit.
    assert "rank(s) [1] did not finish uploading" in failed and "failed to upload" not in failed
    assert not (root / "step-00000020" / MANIFEST).exists()

    store.register_attempt(3)  # the next attempt saves step 20 on both ranks
    group = RelayGroup()
    ranks = [_async_rank(store, tmp_path, group, 3, r, FakeStorage(), uploaders, marker_timeout_s=WAIT_S)
             for r in (0, 1)]
    for r, c in enumerate(ranks):
        c.save(FakeEngine(rank=r, weights=b"attempt-3"), _state(20, world_size=2, attempt=3))
    assert all(c.wait_committed(WAIT_S) is None for c in ranks)

    manifest = _manifest(root, 20)
    assert manifest["root"] == "attempt-00000003" and _listed(manifest) == _on_disk(root, 20, 3)
    loader = _ckpter(store, tmp_path, attempt=4, world_size=2)
    engine = FakeEngine()
    loader.restore(engine, loader.find())
    assert set(engine.loaded) == {MODEL_FILE, optim_file(0), optim_file(1)}  # every rank's shard
    assert all(b"attempt-3" in data for data in engine.loaded.values())


def test_a_stale_rank_cannot_touch_the_markers_of_a_newer_attempt(store, root, tmp_path, uploaders):
    store.register_attempt(1)
    stale_group = RelayGroup()
    stale = [_async_rank(store, tmp_path, stale_group, 1, r, FakeStorage(), uploaders, marker_timeout_s=WAIT_S)
             for r in (0, 1)]
    store.register_attempt(2)
    group = RelayGroup()
    newer = [_async_rank(store, tmp_path, group, 2, r, FakeStorage(), uploaders, marker_timeout_s=WAIT_S)
             for r in (0, 1)]
    for r, c in enumerate(newer):
        c.save(FakeEngine(rank=r, weights=b"attempt-2"), _state(20, world_size=2, attempt=2))
    assert all(c.wait_committed(WAIT_S) is None for c in newer)
    step_dir = root / "step-00000020"
    newer_files = {k: v for k, v in tree(step_dir).items() if "attempt-00000001" not in k}
    assert any(k.startswith("uploaded/attempt-00000002/") for k in newer_files)  # attempt 2's markers

    for r, c in enumerate(stale):  # attempt 1 still runs and reaches step 20
        c.save(FakeEngine(rank=r, weights=b"stale"), _state(20, world_size=2, attempt=1))
    assert "StaleAttemptError" in stale[0].wait_committed(WAIT_S) and stale[1].wait_committed(WAIT_S) is None

    assert {k: v for k, v in tree(step_dir).items() if "attempt-00000001" not in k} == newer_files
    assert _manifest(root, 20)["root"] == "attempt-00000002"


# ----- failed saves -------------------------------------------------------------------------------

def test_sync_upload_failure_keeps_the_previous_commit(store, storage, root, tmp_path):
    ckpter = _commit_steps(store, tmp_path, (10,))
    storage.fail("upload_file", f"/step-00000020/attempt-00000001/ds/{optim_file(0)}")

    with pytest.raises(CheckpointError, match="rank 0: upload failed: injected.*stays uncommitted"):
        ckpter.save(FakeEngine(), _state(20))

    assert _committed_steps(store) == [10] and not (root / "step-00000020" / MANIFEST).exists()
    assert store.verify(store.committed()[0]) is None and ckpter.last.step == 10
    assert not (tmp_path / "scratch-a1-r0" / "save-00000020").exists()
    assert _ckpter(store, tmp_path, attempt=2).find().ckpt.step == 10


def test_sync_commit_write_failure_keeps_the_previous_commit(root, storage, tmp_path):
    store = CheckpointStore(str(root), keep_last=1, storage=storage)
    ckpter = _commit_steps(store, tmp_path, (10,))
    storage.fail("put_if_absent", f"/step-00000020/{MANIFEST}")

    with pytest.raises(CheckpointError, match="injected put_if_absent failure") as raised:
        ckpter.save(FakeEngine(), _state(20))

    assert type(raised.value) is CheckpointError  # the same type on every rank, whatever the store raised
    assert _committed_steps(store) == [10] and store.verify(store.committed()[0]) is None
    assert not any(op == "delete_prefix" and "step-00000010" in uri for op, uri in storage.ops)
    assert ckpter.last.step == 10


def test_async_upload_failure_is_reported_and_the_previous_commit_kept(store, root, tmp_path, uploaders):
    failing = FakeStorage()
    ckpter = _ckpter(store, tmp_path, uploader=uploaders(failing))
    ckpter.save(FakeEngine(deferred=True), _state(10))
    assert ckpter.wait_committed(WAIT_S) is None
    failing.fail("upload_file", f"/step-00000020/attempt-00000001/ds/{MODEL_FILE}")

    ckpter.save(FakeEngine(deferred=True), _state(20))  # returns: the failure comes in the background
    failed = ckpter.wait_committed(WAIT_S)

    # the injected failure is a StorageError (permanent): it stays permanent (uploader.upload_failure)
    assert failed.startswith("rank 0: CheckpointError") and "stays uncommitted" in failed
    assert failed.permanent  # so the loop ends the job instead of retrying it
    assert _committed_steps(store) == [10] and store.verify(store.committed()[0]) is None
    assert ckpter.last.step == 10
    [marker_file] = (root / "step-00000020" / "uploaded" / "attempt-00000001").glob("*/rank-00000.json")
    assert "injected upload_file failure" in json.loads(marker_file.read_text())["error"]  # refused at once
    assert ckpter.wait_committed(WAIT_S) is None  # reported once


def test_background_failures_are_reported_once(store, tmp_path, uploaders):
    failing = FakeStorage()
    failing.fail("upload_file", "/step-00000010/")
    ckpter = _ckpter(store, tmp_path, uploader=uploaders(failing))
    ckpter.save(FakeEngine(deferred=True), _state(10))
    assert ckpter.uploader.flush(WAIT_S)

    first = ckpter.background_failures()

    assert len(first) == 1 and first[0].startswith("CheckpointError") and "injected" in first[0]
    assert ckpter.background_failures() == [] and _committed_steps(store) == []


def test_background_failures_and_wait_are_empty_without_an_uploader(store, tmp_path):
    ckpter = _commit_steps(store, tmp_path, (10,))
    assert ckpter.background_failures() == [] and ckpter.wait_committed(0) is None
    assert _committed_steps(store) == [10]


# ----- world-size change --------------------------------------------------------------------------

def _two_rank_checkpoint(store, tmp_path, uploaders, peers):
    """Step 10 saved by 2 ranks (async: the one mode where ranks need no collectives here)."""
    ranks = [_ckpter(store, tmp_path, rank=r, world_size=2, uploader=uploaders(FakeStorage()),
                     marker_timeout_s=WAIT_S, collectives=peers.member(r)) for r in (0, 1)]
    for r, c in enumerate(ranks):
        c.save(FakeEngine(rank=r, weights=b"ws2"), _state(10, world_size=2))
    assert all(c.wait_committed(WAIT_S) is None for c in ranks)


def test_changed_world_size_without_a_plan_is_refused_before_loading(store, tmp_path, uploaders, peers):
    _two_rank_checkpoint(store, tmp_path, uploaders, peers)
    loader = _ckpter(store, tmp_path, attempt=2, world_size=3)
    resume = loader.find()
    engine = FakeEngine()

    with pytest.raises(CheckpointError, match="written by 2 workers, this run has 3.*prepare_resume"):
        loader.restore(engine, resume)
    assert engine.loads == []  # never a silent partial load


def test_changed_world_size_goes_through_the_universal_conversion(store, tmp_path, uploaders, peers):
    _two_rank_checkpoint(store, tmp_path, uploaders, peers)
    loader = _ckpter(store, tmp_path, attempt=2, world_size=3)
    resume = loader.find()
    work = tmp_path / "universal"
    barriers = []

    def converting_peer():  # the barrier: another rank of the node converted meanwhile
        barriers.append(1)
        out = work / universal.universal_tag(DS_TAG)
        out.mkdir(parents=True)
        (out / universal.DONE_MARKER).write_text("converted")

    plan = prepare_resume(str(resume.local / resume.ckpt.root), DS_TAG, resume.state.world_size,
                          loader.world_size, resume.state.zero_stage, str(work), is_converter=False,
                          barrier=converting_peer)

    assert plan == ResumePlan(str(work), "ds_universal", load_universal=True) and barriers == [1]
    random.seed(99)
    unrestored = random.random()
    random.seed(99)
    engine = FakeEngine()
    assert loader.restore(engine, resume, plan) == _state(10, world_size=2)
    assert engine.loads == [{"load_dir": str(work), "tag": "ds_universal"}]
    assert random.random() == unrestored  # RNG states are per rank: not restored on another world size


def test_changed_world_size_with_no_conversion_is_an_error(store, tmp_path, uploaders, peers):
    _two_rank_checkpoint(store, tmp_path, uploaders, peers)
    resume = _ckpter(store, tmp_path, attempt=2, world_size=3).find()
    with pytest.raises(CheckpointError, match="no converted universal checkpoint"):
        prepare_resume(str(resume.local / resume.ckpt.root), DS_TAG, 2, 3, 2, str(tmp_path / "universal"),
                       is_converter=False, barrier=lambda: None)


def test_same_world_size_plan_loads_the_checkpoint_as_saved(store, tmp_path, uploaders, peers):
    _two_rank_checkpoint(store, tmp_path, uploaders, peers)
    loader = _ckpter(store, tmp_path, attempt=2, world_size=2)
    resume = loader.find()
    plan = prepare_resume(str(resume.local / resume.ckpt.root), DS_TAG, 2, 2, 2, str(tmp_path / "universal"))

    engine = FakeEngine()
    loader.restore(engine, resume, plan)

    assert plan.load_universal is False
    assert engine.loads == [{"load_dir": str(resume.local / "attempt-00000001"), "tag": DS_TAG}]
    assert set(engine.loaded) == {MODEL_FILE, optim_file(0), optim_file(1)}


def test_engine_finding_nothing_is_a_checkpoint_error(store, tmp_path):
    _commit_steps(store, tmp_path, (10,))
    loader = _ckpter(store, tmp_path, attempt=2)
    resume = loader.find()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="DeepSpeed found no checkpoint"):
        loader.restore(FakeEngine(), resume, ResumePlan(str(empty), DS_TAG, load_universal=False))


def test_storage_error_while_finding_is_not_swallowed(store, storage, tmp_path):
    # rank 0 reads manifests through the store: a permanent storage error must surface, not look like
    # "no checkpoint" (which would restart training from step 0)
    _commit_steps(store, tmp_path, (10,))

    class Unreadable(FakeStorage):
        def read_bytes(self, uri):
            raise StorageError(f"{uri}: access denied")

    loader = _ckpter(CheckpointStore(store.uri, storage=Unreadable()), tmp_path, attempt=2)
    with pytest.raises(StorageError, match="access denied"):
        loader.find()


# ----- materialize: a missing file skips the checkpoint, access denied ends the job ------------------

class _DownloadingStore(CheckpointStore):
    """Reads its step directories by download, as it does from S3."""

    def _local_step_dir(self, ckpt):
        return None


class _RefusingStorage(FakeStorage):
    def __init__(self, error: Exception):
        super().__init__()
        self.error = error

    def download_file(self, uri: str, local_file: str) -> None:
        raise self.error


@pytest.mark.parametrize("error, expected", [
    (NotFoundError("s3://b/ckpt/step-00000010/x: no such object (NoSuchKey)"), CheckpointError),
    (StorageError("s3://b/ckpt/step-00000010/x: access denied (AccessDenied)"), StorageError),
    (TransientStorageError("s3://b/ckpt/step-00000010/x: still failing (503)"), TransientStorageError),
], ids=["missing-file", "access-denied", "throttled"])
def test_materialize_skips_only_a_missing_file(root, tmp_path, error, expected):
    _commit_steps(CheckpointStore(str(root), keep_last=3, storage=FakeStorage()), tmp_path, (10,))
    store = _DownloadingStore(str(root), keep_last=3, storage=_RefusingStorage(error))
    [ckpt] = store.committed()
    with pytest.raises(expected) as raised:
        store.materialize(ckpt, tmp_path / "scratch")
    if expected is CheckpointError:  # the checkpoint is unusable: newest_verified passes over it
        assert "failed verification" in str(raised.value)
    else:  # the store's answer itself: the job ends (permanent) or the attempt is retried (temporary)
        assert raised.value is error
