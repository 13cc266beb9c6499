"""What a worker reads: its slice of the job's sample stream, and the tokenizer files every
checkpoint carries (so that export needs nothing but the checkpoint)."""

from __future__ import annotations

from pathlib import Path

from orchestrator import storage as st
from orchestrator.spec import PretrainJob


def job_stream(job: PretrainJob, rank: int, world_size: int, cursor: dict | None):
    """This rank's slice of the job's global sample stream, from ``cursor`` (or the start)."""
    from orchestrator.data.stream import BatchStream, Cursor

    d, t = job.spec.data, job.spec.training
    return BatchStream(d.shards, global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
                       rank=rank, world_size=world_size, seed=d.seed, mlm_probability=d.mlm_probability,
                       whole_word_masking=d.whole_word_masking, shuffle_window=d.shuffle_window,
                       prefetch_bytes=d.prefetch_bytes, cursor=Cursor.from_dict(cursor) if cursor else Cursor())


def tokenizer_files(index, scratch: Path) -> Path | None:
    """The shards' tokenizer files (index.tokenizer_files), copied into a local directory."""
    files = dict(getattr(index, "tokenizer_files", {}) or {})
    if not files:
        return None
    dest = scratch / "tokenizer"
    dest.mkdir(parents=True, exist_ok=True)
    for role in files:
        uri = index.tokenizer_uri(role)
        st.storage_for(uri).download_file(uri, str(dest / Path(files[role]).name))
    return dest


class StagedBatches:
    """The stream's batches, each with its micro-batches' device inputs (``to_device``: numpy in,
    tensors on the device out).

    ``stage_next`` pulls the next batch and starts its copies while the device is still busy with
    the current step (the loop calls it after the step's last backward is queued, before the step's
    one host sync): the host's share of the next step — reading, masking, indexing, pinning — then
    overlaps the device's work instead of following it with the device idle. A staged batch that
    is never trained (the attempt stops, the group re-forms) is dropped; the cursor a checkpoint
    keeps is the trained batch's own, so dropping one loses no sample."""

    def __init__(self, batches, to_device):
        self._batches, self._to_device, self._staged = batches, to_device, None

    def take(self):
        """(batch, its micro-batches' device inputs): the staged one, else the next one now."""
        staged = self._staged or self._stage()
        self._staged = None
        return staged

    def stage_next(self) -> None:
        if self._staged is None:
            self._staged = self._stage()

    def _stage(self):
        batch = next(self._batches)
        return batch, [self._to_device(micro) for micro in batch.micro_batches]
