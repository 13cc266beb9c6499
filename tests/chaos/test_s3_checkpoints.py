"""Checkpoints on S3 (moto on loopback behind a fault proxy), asynchronous upload.

- save, commit, load and verify end to end on s3:// with async upload;
- the connection dropped (blackhole) during the upload of step K and a worker killed then:
  step K never commits and never becomes the one loaded; the next attempt resumes from the
  previous committed checkpoint and ends at max_steps;
- a stale attempt's background commit is refused (attempt 2 registered meanwhile).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from orchestrator.errors import StaleAttemptError
from orchestrator.train.checkpoint import MANIFEST, AsyncUploader, CheckpointStore, step_dir_name
from tests.chaos.conftest import attempt, job, train_workers

pytestmark = pytest.mark.chaos


def _kill_worker_when_blackholed(proxy, done: threading.Event) -> dict:
    out: dict = {}

    def run():
        while not done.is_set():
            if proxy.blackhole and proxy.stats["dropped"] > 0:
                workers = train_workers()
                if workers:
                    os.kill(workers[-1], signal.SIGKILL)
                    out.update(pid=workers[-1], path=proxy.triggered_path)
                    return
            time.sleep(0.02)

    threading.Thread(target=run, daemon=True).start()
    return out


def test_kill_during_s3_upload_uses_the_previous_checkpoint(tmp_path, shards, bucket, s3_proxy, ray_cluster,
                                                            monkeypatch):
    uri = f"s3://{bucket}/ck"
    m = job(tmp_path / "job.yaml", shards, uri, async_upload=True, steps=10, every=2)
    # the first write of step 6's files once step 4's commit (its manifest) has been answered
    s3_proxy.armed_by = f"/ck/{step_dir_name(4)}/{MANIFEST}"
    s3_proxy.trigger = f"/ck/{step_dir_name(6)}/"
    done = threading.Event()
    killed = _kill_worker_when_blackholed(s3_proxy, done)
    code1, _ = attempt(m, tmp_path, 1, monkeypatch)
    done.set()
    assert killed and code1 != 0, (killed, code1)
    assert step_dir_name(6) in killed["path"], killed
    s3_proxy.reset()
    store = CheckpointStore(uri)
    committed = [c.step for c in store.committed()]
    assert 6 not in committed and committed[0] == 4, committed
    code2, rows2 = attempt(m, tmp_path, 2, monkeypatch)
    assert code2 == 0
    assert [r["step"] for r in rows2] == list(range(5, 11)), "resumed from step 4, the previous commit"
    final = store.committed()
    assert final[0].step == 10 and final[0].attempt == 2
    assert store.newest_verified(tmp_path / "verify")[0].step == 10  # downloaded from S3 and verified


def test_stale_attempts_background_commit_is_refused(tmp_path, bucket):
    uri = f"s3://{bucket}/stale"
    store = CheckpointStore(uri)
    store.register_attempt(1)
    staging = tmp_path / "staging"
    (staging / "ds").mkdir(parents=True)
    (staging / "state.json").write_text("{}")
    (staging / "ds" / "shard.pt").write_bytes(os.urandom(1 << 16))
    up = AsyncUploader()
    try:
        gate = threading.Event()
        futures = up.submit_dir(staging, store.step_uri(5), prefix="attempt-00000001")

        def commit(files):
            gate.wait(30)  # attempt 2 registers while attempt 1's commit is in flight
            from orchestrator.train.checkpoint import FileEntry
            return store.commit(5, 1, 1, [FileEntry(f.name, f.size, f.sha256) for f in files])

        fut = up.commit_after(futures, commit)
        CheckpointStore(uri).register_attempt(2)
        gate.set()
        assert up.flush(60)
        with pytest.raises(StaleAttemptError):
            up.raise_if_failed()
    finally:
        up.close(5)
    assert fut.done() and store.committed() == []
    assert not store.storage.exists(f"{store.step_uri(5)}/manifest.json")
