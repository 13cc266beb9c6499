"""TensorBoard scalars of a run, written by rank 0 beside the checkpoints: ``<checkpoint.uri>/tensorboard/``.

Every attempt writes its own event file, opened with ``purge_step`` = its first step. The writer
then records a session start at that step, and TensorBoard's reader drops what earlier files hold
at or after it: the steps an earlier attempt trained past its last committed checkpoint, which
this attempt trains again. So each step is read once, with the values of the attempt that kept it.

On S3 the file is written on local disk and uploaded through ``orchestrator.storage`` (the whole
file, under the same name, so each upload replaces the last) at every checkpoint and when the
attempt ends; on a local path TensorBoard reads the file where it is written.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from orchestrator import storage as st
from orchestrator.errors import BertctlError

log = logging.getLogger("bertctl.train.tensorboard")

TB_DIR = "tensorboard"
# Per optimizer step, from the synced StepMetrics; a value that is None (no NSP head, no norm) is skipped.
STEP_SCALARS = {"train/loss": "loss", "train/mlm_loss": "mlm_loss", "train/nsp_loss": "nsp_loss",
                "train/mlm_accuracy": "mlm_accuracy", "train/nsp_accuracy": "nsp_accuracy", "train/lr": "lr",
                "train/tokens_per_s": "tokens_per_s", "train/grad_norm": "grad_norm"}
SAVE_SECONDS = "checkpoint/save_seconds"


def tensorboard_uri(checkpoint_uri: str) -> str:
    """Where a job's event files live (``tensorboard --logdir`` this, or the checkpoint URI)."""
    return st.join(checkpoint_uri, TB_DIR)


class ScalarLog:
    """One attempt's event file. Writes are buffered by the writer; ``checkpointed`` makes them durable."""

    def __init__(self, checkpoint_uri: str, first_step: int, attempt: int, scratch: Path):
        from torch.utils.tensorboard import SummaryWriter

        target = tensorboard_uri(checkpoint_uri)
        self.remote = target if st.is_s3(target) else None
        self.local_dir = scratch / TB_DIR if self.remote else st.local_path(target)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.local_dir), purge_step=first_step,
                                    filename_suffix=f".attempt-{attempt}")

    def step(self, step: int, metrics) -> None:
        """The scalars of one optimizer step (a ``StepMetrics``)."""
        for tag, field in STEP_SCALARS.items():
            value = getattr(metrics, field, None)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def checkpointed(self, step: int, save_seconds: float) -> None:
        """A checkpoint of ``step`` was taken: record its cost, and flush (and upload) what was written."""
        self.writer.add_scalar(SAVE_SECONDS, save_seconds, step)
        self._persist()

    def close(self) -> None:
        self.writer.close()
        self._persist()

    def _persist(self) -> None:
        self.writer.flush()
        if self.remote is None:
            return
        try:  # the scratch directory holds this attempt's file alone
            for path in sorted(self.local_dir.iterdir()):
                st.storage_for(self.remote).upload_file(str(path), st.join(self.remote, path.name))
        except BertctlError as exc:  # scalars must never stop training; the next checkpoint uploads again
            log.warning("could not upload TensorBoard events to %s (%s); retrying at the next checkpoint",
                        self.remote, exc)
