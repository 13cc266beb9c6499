"""CheckpointStore: commit last, verify, skip partial/corrupt, retention, fencing (no Ray; torch only
writes and reads the small checkpoint files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orchestrator.errors import CheckpointError, StaleAttemptError
from orchestrator.train.checkpoint import CheckpointStore, TrainState


def _state(step: int, attempt: int = 1) -> TrainState:
    return TrainState(step=step, tokens_seen=step * 100, cursor={"epoch": 0, "sample": step * 16}, world_size=2,
                      attempt=attempt, zero_stage=2, global_batch_size=16, job_id="j")


def _save(store: CheckpointStore, tmp: Path, step: int, attempt: int = 1, commit: bool = True):
    """What Checkpointer does per rank: stage files, upload into the attempt dir, then commit."""
    staging = tmp / f"staging-{step}-{attempt}"
    (staging / "ds").mkdir(parents=True, exist_ok=True)
    # a real torch.save file: the loader reads checkpoint files as data only (checkpoint/safe_load.py)
    torch.save({"weights": f"weights {step} {attempt}" * 50}, staging / "ds" / "shard-0.pt")
    (staging / "state.json").write_bytes(_state(step, attempt).to_json())
    entries = store.upload_dir(staging, step, attempt)
    return store.commit(step, attempt, 2, entries) if commit else entries


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    return CheckpointStore(str(tmp_path / "ckpt"), keep_last=2)


def test_nothing_is_committed_before_the_manifest(store, tmp_path):
    _save(store, tmp_path, 10, commit=False)
    assert store.step_numbers() == [10]
    assert store.committed() == [] and store.newest_verified(tmp_path / "scratch") is None
    ckpt = store.commit(10, 1, 2, _save(store, tmp_path, 10, commit=False))
    manifest = json.loads((tmp_path / "ckpt" / "step-00000010" / "manifest.json").read_text())
    assert manifest["attempt"] == 1 and {f["path"] for f in manifest["files"]} == {
        "attempt-00000001/ds/shard-0.pt", "attempt-00000001/state.json"}
    found, local = store.newest_verified(tmp_path / "scratch")
    assert found == ckpt and store.read_state(found, local).step == 10


def test_newest_partial_checkpoint_is_skipped(store, tmp_path):
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20, commit=False)  # a crash before the commit
    found, _ = store.newest_verified(tmp_path / "scratch")
    assert found.step == 10


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_newest_is_skipped_with_a_reason(store, tmp_path, damage):
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20)
    shard = tmp_path / "ckpt" / "step-00000020" / "attempt-00000001" / "ds" / "shard-0.pt"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[7] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[:-1]))
    else:
        shard.unlink()
    skipped = []
    found, _ = store.newest_verified(tmp_path / "scratch", on_skip=lambda sk: skipped.append((sk.step, sk.reason)))
    assert found.step == 10
    assert skipped and skipped[0][0] == 20 and "shard-0.pt" in skipped[0][1]


def test_unreadable_manifest_is_not_a_commit(store, tmp_path):
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20)
    (tmp_path / "ckpt" / "step-00000020" / "manifest.json").write_text("{not json")
    assert [c.step for c in store.committed()] == [10]


def test_steps_without_a_readable_manifest_are_reported_as_skipped(store, tmp_path, caplog):
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20)
    (tmp_path / "ckpt" / "step-00000020" / "manifest.json").write_text("{not json")
    _save(store, tmp_path, 30, commit=False)  # a save that never committed
    skipped = []
    with caplog.at_level("WARNING", logger="bertctl.train.checkpoint"):
        found, _ = store.newest_verified(tmp_path / "scratch", on_skip=skipped.append)
    assert found.step == 10
    assert [(sk.step, sk.uri, sk.committed) for sk in skipped] == [
        (30, store.step_uri(30), False), (20, store.step_uri(20), False)]
    assert "no manifest.json" in skipped[0].reason and "unreadable manifest.json" in skipped[1].reason
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("skipping checkpoint step 30: no manifest.json") for m in logged)


def test_only_files_named_by_the_manifest_are_read(store, tmp_path):
    # A stale attempt's files in the same step directory never mix into the committed checkpoint.
    ckpt = _save(store, tmp_path, 10, attempt=2)
    stray = tmp_path / "ckpt" / "step-00000010" / "attempt-00000001" / "ds" / "shard-0.pt"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"stale")
    assert all(f.path.startswith("attempt-00000002/") for f in ckpt.files)
    assert store.verify(store.committed()[0]) is None


def test_retention_keeps_last_and_never_the_newest(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"), keep_last=2)
    for step in (10, 20, 30):
        _save(store, tmp_path, step)
        store.apply_retention()
    _save(store, tmp_path, 35, commit=False)  # partial, newer than the newest commit: kept
    assert store.step_numbers() == [20, 30, 35]
    one = CheckpointStore(str(tmp_path / "ckpt"), keep_last=1)
    one.apply_retention()
    assert [c.step for c in one.committed()] == [30]
    with pytest.raises(CheckpointError):
        CheckpointStore(str(tmp_path / "x"), keep_last=0)


def test_retention_drops_partials_older_than_the_newest_commit(store, tmp_path):
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 15, commit=False)
    _save(store, tmp_path, 20)
    assert store.apply_retention() == [15]
    assert store.step_numbers() == [10, 20]


def test_stale_attempt_cannot_commit(store, tmp_path):
    store.register_attempt(2)
    _save(store, tmp_path, 10, attempt=2)
    store.register_attempt(3)  # the manager started a newer attempt
    with pytest.raises(StaleAttemptError, match="attempt 2 is stale"):
        _save(store, tmp_path, 20, attempt=2)
    assert [c.step for c in store.committed()] == [10]


def test_a_step_is_committed_once(store, tmp_path):
    store.register_attempt(1)
    _save(store, tmp_path, 10, attempt=1)
    with pytest.raises(CheckpointError, match="already committed"):
        _save(store, tmp_path, 10, attempt=1)


def test_older_attempt_refused_where_a_newer_one_committed(tmp_path):
    # The newer attempt committed step 10; the registry is checked first, and even without it the
    # conditional put of the manifest refuses the older attempt.
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _save(store, tmp_path, 10, attempt=3)
    entries = _save(store, tmp_path, 10, attempt=2, commit=False)
    with pytest.raises(StaleAttemptError, match="newer attempt 3"):
        store.commit(10, 2, 2, entries)
    assert store.committed()[0].attempt == 3 and store.verify(store.committed()[0]) is None


def test_commit_without_state_is_refused(store, tmp_path):
    staging = tmp_path / "s"
    staging.mkdir()
    (staging / "x.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="state.json"):
        store.commit(5, 1, 1, store.upload_dir(staging, 5, 1))


def test_discard_uncommitted_leaves_commits_alone(store, tmp_path):
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20, commit=False)
    store.discard_uncommitted(20)
    store.discard_uncommitted(10)
    assert store.step_numbers() == [10]
