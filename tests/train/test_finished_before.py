"""An attempt that fails after committing its checkpoint at max_steps ends as succeeded: a node lost
as ``fit()`` returned must not cost a relaunch, nor fail a finished job whose restart budget is
spent. Real committed checkpoints (the trainer's layout, verified by their manifest digests)."""

from __future__ import annotations

import pytest

from orchestrator.spec import load_manifest
from orchestrator.train.checkpoint import CheckpointStore
from orchestrator.train.driver.entry import finished_before
from orchestrator.train.worker import FencedError
from tests.finetune.conftest import write_checkpoint
from tests.train.conftest import manifest

LOST = RuntimeError("Connection reset by peer")  # what the survivors' collective raises


def _setup(tmp_path, committed_step: int, max_steps: int):
    uri = write_checkpoint(str(tmp_path / "ckpt"), tmp_path, step=committed_step)
    job = load_manifest(manifest(tmp_path / "job.yaml", tmp_path / "shards", tmp_path / "ckpt", steps=max_steps))
    (tmp_path / "work" / "scratch").mkdir(parents=True)
    return CheckpointStore(uri), job, tmp_path / "work"


def test_a_failure_after_the_final_commit_is_a_finished_job(tmp_path):
    store, job, work = _setup(tmp_path, committed_step=8, max_steps=8)
    assert finished_before(LOST, store, job, work)


@pytest.mark.parametrize("exc,committed", [(LOST, 4), (FencedError("409: attempt 3 exists"), 8)])
def test_an_unfinished_or_fenced_attempt_keeps_its_failure(tmp_path, exc, committed):
    store, job, work = _setup(tmp_path, committed_step=committed, max_steps=8)
    assert not finished_before(exc, store, job, work)


def test_a_final_checkpoint_that_does_not_verify_is_no_finished_job(tmp_path):
    store, job, work = _setup(tmp_path, committed_step=8, max_steps=8)
    state = next((tmp_path / "ckpt").glob("step-*/attempt-*/state.json"))
    state.write_bytes(state.read_bytes().replace(b'"step"', b'"stap"'))  # its digest no longer matches
    assert not finished_before(LOST, store, job, work)
