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
