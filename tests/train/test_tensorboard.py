"""TensorBoard scalars beside the checkpoints, read back with TensorBoard's own reader.

A resumed run trains again the steps its predecessor trained past its last committed checkpoint;
each attempt's event file starts with a purge at its first step, so the reader sees every step
once. Checked on a real two-attempt run (local checkpoint path) and on S3 (moto's server), where
rank 0 writes locally and uploads at checkpoints and at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from orchestrator import storage as st
from orchestrator.contract import ExitCode
from orchestrator.train.worker.metrics import StepMetrics
from orchestrator.train.worker.tensorboard import ScalarLog
from tests.support.s3server import s3_env, s3_server  # noqa: F401 - fixtures
from tests.train.conftest import manifest, train

STEP_TAGS = ("train/loss", "train/mlm_accuracy", "train/nsp_accuracy", "train/lr", "train/tokens_per_s",
             "train/grad_norm")


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_loss_steps(event_file: Path) -> list[int]:
    """The loss steps one file holds, before the reader's purge."""
    return [e.step for e in EventFileLoader(str(event_file)).Load()
            if any(v.tag == "train/loss" for v in e.summary.value)]


@pytest.mark.e2e
def test_a_resumed_run_reads_back_every_step_once(tmp_path, shards, ray_cluster):
    ckpt = tmp_path / "ckpt"
    code, first = train(manifest(tmp_path / "a.yaml", shards, ckpt, steps=6, every=4, workers=1), tmp_path / "w1")
    assert code == ExitCode.SUCCEEDED and [r["step"] for r in first] == list(range(1, 7))
    # As if attempt 1 died after step 6 before that checkpoint committed: the resume starts at step 4.
    shutil.rmtree(ckpt / "step-00000006")
    code, second = train(manifest(tmp_path / "b.yaml", shards, ckpt, steps=8, every=4, workers=1), tmp_path / "w2")
    assert code == ExitCode.SUCCEEDED and [r["step"] for r in second] == [5, 6, 7, 8]

    files = sorted((ckpt / "tensorboard").glob("events.out.tfevents.*"))
    assert [raw_loss_steps(f) for f in files] == [[1, 2, 3, 4, 5, 6], [5, 6, 7, 8]]  # 5 and 6 twice on disk
    scalars = read_scalars(ckpt / "tensorboard")
    for tag in STEP_TAGS:
        assert [s for s, _ in scalars[tag]] == list(range(1, 9)), tag  # ... and once in TensorBoard
    kept = first[:4] + second
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in kept], rel=1e-6)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([r["lr"] for r in kept], rel=1e-6)
    assert all(v > 0 for _, v in scalars["train/grad_norm"])
    # Checkpoint cost at the saves that were kept: 4 (attempt 1) and 8 (attempt 2); 6 was purged.
    assert [s for s, _ in scalars["checkpoint/save_seconds"]] == [4, 8]


def _metrics(step: int, loss: float) -> StepMetrics:
    return StepMetrics(step=step, loss=loss, mlm_loss=loss - 0.5, nsp_loss=0.5, mlm_accuracy=0.1, nsp_accuracy=0.5,
                       tokens=100, tokens_per_s=1000.0 + step, lr=1e-3, seconds=0.1, nonfinite=False, fenced=False,
                       save=False, report=False, grad_norm=1.5)


def test_on_s3_event_files_upload_at_checkpoints_and_at_the_end(s3_env, tmp_path):  # noqa: F811 - fixture
    uri = f"s3://{s3_env}/jobs/j1/ckpt"
    first = ScalarLog(uri, 1, attempt=1, scratch=tmp_path / "rank0-a")
    for step in range(1, 5):
        first.step(step, _metrics(step, 10.0 + step))
    first.checkpointed(4, 0.25)
    uploaded = st.storage_for(uri).list_files(st.join(uri, "tensorboard"))
    assert len(uploaded) == 1  # the checkpoint made the file durable
    for step in (5, 6):  # trained past the checkpoint, then the attempt ends (preempted, nothing committed)
        first.step(step, _metrics(step, 10.0 + step))
    first.close()
    second = ScalarLog(uri, 5, attempt=2, scratch=tmp_path / "rank0-b")
    for step in range(5, 9):
        second.step(step, _metrics(step, 20.0 + step))
    second.checkpointed(8, 0.5)
    second.close()

    local = tmp_path / "downloaded"
    local.mkdir()
    names = st.storage_for(uri).list_files(st.join(uri, "tensorboard"))
    assert len(names) == 2
    for name in names:
        st.storage_for(uri).download_file(name, str(local / name.rsplit("/", 1)[1]))
    scalars = read_scalars(local)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 9))
    # 5 and 6 of the ended attempt (10 + step) are purged; the resumed attempt's (20 + step) are read.
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([11, 12, 13, 14, 25, 26, 27, 28])
    assert scalars["checkpoint/save_seconds"] == [(4, 0.25), (8, 0.5)]
