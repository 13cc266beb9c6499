"""Async checkpoint upload against a real S3 endpoint (moto on loopback, through a fault proxy)."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from orchestrator.errors import CheckpointError, TransientStorageError
from orchestrator.storage import LocalStorage, storage_for
from orchestrator.train.checkpoint.uploader import (AsyncUploader, Uploaded, gather_rank_markers, marker_dir,
                                                    rank_marker_uri, write_rank_marker)


def _staging(root, n=3, size=200_000):
    files = {}
    for i in range(n):
        p = root / "ds" / f"zero_pp_rank_{i}_optim_states.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        p.write_bytes(data)
        files[f"attempt-0001/ds/{p.name}"] = hashlib.sha256(data).hexdigest()
    (root / "state.json").write_text('{"step": 7}')
    files["attempt-0001/state.json"] = hashlib.sha256(b'{"step": 7}').hexdigest()
    return files


def _committer(storage, step_uri, calls):
    def commit(files):
        calls.append(files)
        manifest = {"files": [f.__dict__ for f in sorted(files, key=lambda f: f.name)]}
        if not storage.put_if_absent(f"{step_uri}/manifest.json", json.dumps(manifest).encode()):
            raise CheckpointError("already committed")
        return len(files)
    return commit


def test_local_upload_hashes_and_commits(tmp_path):
    expected = _staging(tmp_path / "stage")
    dest = str(tmp_path / "ckpt" / "step-00000007")
    up = AsyncUploader(storage_for, max_workers=2)
    calls = []
    futs = up.submit_dir(tmp_path / "stage", dest, prefix="attempt-0001")
    commit = up.commit_after(futs, _committer(LocalStorage(), dest, calls))
    assert commit.result(timeout=30) == 4
    assert {f.name: f.sha256 for f in calls[0]} == expected
    for name, digest in expected.items():
        assert hashlib.sha256(open(f"{dest}/{name}", "rb").read()).hexdigest() == digest
    assert up.close(5)


def test_s3_upload_then_commit(s3, tmp_path):
    proxy, storage, direct, bucket = s3
    expected = _staging(tmp_path)
    step_uri = f"s3://{bucket}/job/step-00000007"
    up = AsyncUploader(lambda uri: storage, max_workers=3)
    calls = []
    fut = up.commit_after(up.submit_dir(tmp_path, step_uri, "attempt-0001"), _committer(storage, step_uri, calls))
    assert fut.result(timeout=60) == 4
    for name, digest in expected.items():
        assert direct.sha256(f"{step_uri}/{name}") == digest  # what S3 holds is what was hashed
    manifest = json.loads(direct.read_bytes(f"{step_uri}/manifest.json"))
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == expected
    assert up.close(5)


def test_dropped_connection_means_no_commit(s3, tmp_path):
    proxy, storage, direct, bucket = s3
    _staging(tmp_path)
    proxy.drop = lambda line: line.startswith("PUT") and "rank_1_optim" in line  # every retry too
    step_uri = f"s3://{bucket}/job/step-00000008"
    up = AsyncUploader(lambda uri: storage, max_workers=3)
    calls, cleaned = [], []
    fut = up.commit_after(up.submit_dir(tmp_path, step_uri, "attempt-0001"),
                          _committer(storage, step_uri, calls), cleanup=lambda: cleaned.append(1))
    with pytest.raises(TransientStorageError, match="1 of 4 checkpoint upload.s. failed.*stays uncommitted"):
        fut.result(timeout=60)
    assert calls == [] and cleaned == [1]
    assert not direct.exists(f"{step_uri}/manifest.json")
    assert proxy.dropped  # the fault really happened on the wire
    assert up.flush(5)
    with pytest.raises(TransientStorageError):
        up.raise_if_failed()
    up.raise_if_failed()  # reported once
    assert up.close(5)


def test_training_continues_while_uploading_and_flush_waits_for_the_commit(s3, tmp_path):
    proxy, storage, direct, bucket = s3
    _staging(tmp_path, n=2)
    step_uri = f"s3://{bucket}/job/step-00000009"
    up = AsyncUploader(lambda uri: storage, max_workers=2)
    calls = []
    proxy.stall.clear()  # S3 is slow: nothing gets through yet
    fut = up.commit_after(up.submit_dir(tmp_path, step_uri, "attempt-0001"), _committer(storage, step_uri, calls))
    # commit_after returned at once: the training thread is free while uploads are held.
    assert not fut.done() and up.in_flight() == 1
    assert up.flush(timeout=0.2) is False  # a preemption with too little time left sees it pending
    assert not direct.exists(f"{step_uri}/manifest.json")
    proxy.stall.set()
    assert up.flush(timeout=60) is True
    assert fut.result() == 3 and direct.exists(f"{step_uri}/manifest.json")
    assert up.in_flight() == 0
    assert up.close(5)


def test_wait_all_over_everything_submitted(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    up = AsyncUploader(storage_for, max_workers=1)
    up.submit(str(tmp_path / "a"), str(tmp_path / "out" / "a"))
    assert up.wait_all() == [Uploaded("a", 3, hashlib.sha256(b"abc").hexdigest())]
    up.submit(str(tmp_path / "missing"), str(tmp_path / "out" / "b"))
    with pytest.raises(TransientStorageError, match="FileNotFoundError"):
        up.wait_all()
    assert up.close(5)


def test_rank_markers_let_rank0_commit_without_collectives(s3, tmp_path):
    proxy, storage, direct, bucket = s3
    step_uri = f"s3://{bucket}/job/step-00000010"
    markers = marker_dir(step_uri, "attempt-00000001", "save-a")
    write_rank_marker(storage, marker_dir(step_uri, "attempt-00000001", "save-b"), 1, [])  # another save's
    per_rank = {r: [Uploaded(f"attempt-0001/ds/r{r}", r + 1, f"{r:064x}")] for r in range(3)}

    def late_rank(r):
        write_rank_marker(storage, markers, r, per_rank[r])

    write_rank_marker(storage, markers, 0, per_rank[0])
    threads = [threading.Timer(0.3, late_rank, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    files = gather_rank_markers(storage, markers, 3, timeout_s=30, poll_s=0.05)
    assert files == per_rank[0] + per_rank[1] + per_rank[2]  # the other save's marker of rank 1 ignored
    assert rank_marker_uri(markers, 2) == f"{step_uri}/uploaded/attempt-00000001/save-a/rank-00002.json"


def test_missing_rank_marker_is_a_temporary_error(tmp_path):
    """A rank that did not finish (lost, slow) is worth another attempt: the commit is abandoned as temporary."""
    storage = LocalStorage()
    write_rank_marker(storage, str(tmp_path), 0, [])
    naps = []
    with pytest.raises(TransientStorageError, match=r"rank\(s\) \[1\] did not finish"):
        gather_rank_markers(storage, str(tmp_path), 2, timeout_s=0, sleep=naps.append)
