"""Elastic resume: load a ZeRO checkpoint saved by N ranks into a run with M != N ranks.

DeepSpeed refuses to load ZeRO-1/2/3 optimizer partitions into a different data-parallel
world size. Its answer is the *universal* checkpoint format (one folder per parameter holding
the full fp32 weight and optimizer states), produced by ``deepspeed.checkpoint.ds_to_universal``
and loaded by an engine whose config has ``checkpoint: {load_universal: true}``. This module
runs that conversion inside the load path, so a resume on a changed world size needs no manual
step:

    plan = prepare_resume(ckpt_dir, tag, saved_world_size=2, world_size=3, zero_stage=2,
                          work_dir=local_scratch, is_converter=(local_rank == 0), barrier=dist.barrier)
    ds_config = universal_ds_config(ds_config) if plan.load_universal else ds_config
    engine, *_ = deepspeed.initialize(model=model, config=ds_config, ...)
    engine.load_checkpoint(plan.load_dir, tag=plan.tag)

The engine's config is fixed at ``deepspeed.initialize``, so the plan must be made before the
engine exists. One process per shared ``work_dir`` converts; the others wait at ``barrier`` and
then read the outcome from marker files, so a failed conversion is an error on *every* rank
before step 1 (never a hang, never a silent partial load).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import glob
import io
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Callable

from orchestrator.errors import CheckpointError

DONE_MARKER = ".bertctl_universal_done"
_FAILED = ".bertctl_universal_failed"
# Stage 1/2 keep the (replicated) module in one mp_rank file; stage 3 partitions it per rank.
_STAGE12_MODEL_FILE = "mp_rank_00_model_states.pt"
SUPPORTED_STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class ResumePlan:
    """What ``engine.load_checkpoint`` gets: ``load_checkpoint(load_dir, tag=tag)``.

    ``load_universal`` says whether the engine must be built from ``universal_ds_config``.
    """

    load_dir: str
    tag: str
    load_universal: bool


def universal_ds_config(ds_config: dict) -> dict:
    """A copy of a DeepSpeed config that loads a universal checkpoint (the input is untouched)."""
    out = copy.deepcopy(ds_config)
    out.setdefault("checkpoint", {})["load_universal"] = True
    return out


def universal_tag(tag: str) -> str:
    return f"{tag}_universal"


def prepare_resume(ckpt_dir: str, tag: str, saved_world_size: int, world_size: int, zero_stage: int,
                   work_dir: str, *, is_converter: bool = True,
                   barrier: Callable[[], None] | None = None) -> ResumePlan:
    """Decide how to load ``ckpt_dir/tag`` on ``world_size`` ranks, converting when needed.

    ``ckpt_dir`` is the ``save_dir`` given to ``engine.save_checkpoint(save_dir, tag)`` (a local
    directory: download a remote checkpoint first). ``work_dir`` receives the universal copy; it
    must be visible to every process that shares the converter (one converter per node for a
    node-local ``work_dir``, one per job for a shared one). Every rank must call this, because
    ``barrier`` is collective. Raises ``CheckpointError`` (permanent) when the checkpoint cannot
    be resumed on this world size.
    """
    _validate(ckpt_dir, tag, saved_world_size, world_size, zero_stage)
    if world_size == saved_world_size or zero_stage == 0:
        # Stage 0 keeps the whole optimizer state in the replicated model file: any world size loads it.
        if barrier is not None:
            barrier()
        return ResumePlan(ckpt_dir, tag, load_universal=False)
    _check_files(os.path.join(ckpt_dir, tag), saved_world_size, zero_stage)
    out_dir = os.path.join(work_dir, universal_tag(tag))
    if is_converter:
        _convert_once(os.path.join(ckpt_dir, tag), out_dir)
    if barrier is not None:
        barrier()
    _raise_if_not_converted(out_dir)
    return ResumePlan(work_dir, universal_tag(tag), load_universal=True)


def _validate(ckpt_dir: str, tag: str, saved_world_size: int, world_size: int, zero_stage: int) -> None:
    if zero_stage not in SUPPORTED_STAGES:
        raise CheckpointError(f"zero_stage {zero_stage} is not a ZeRO stage; use one of {SUPPORTED_STAGES}")
    if saved_world_size < 1 or world_size < 1:
        raise CheckpointError(f"world sizes must be at least 1 (saved {saved_world_size}, now {world_size})")
    if not os.path.isdir(os.path.join(ckpt_dir, tag)):
        raise CheckpointError(f"{os.path.join(ckpt_dir, tag)}: no such checkpoint directory; "
                              "download the committed checkpoint before preparing the resume")


def _check_files(tag_dir: str, saved_world_size: int, zero_stage: int) -> None:
    """Fail before conversion when the shards do not match what the checkpoint's state says."""
    optim = glob.glob(os.path.join(tag_dir, "*zero_pp_rank_*_optim_states.pt"))
    if len(optim) != saved_world_size:
        raise CheckpointError(
            f"{tag_dir}: {len(optim)} ZeRO optimizer shard(s) but the checkpoint says it was saved by "
            f"{saved_world_size} rank(s); the checkpoint is incomplete — resume from an earlier one "
            f"or on {saved_world_size} worker(s) without the optimizer state")
    has_stage12_model = os.path.isfile(os.path.join(tag_dir, _STAGE12_MODEL_FILE))
    if (zero_stage == 3) == has_stage12_model:
        saved = "1 or 2" if has_stage12_model else "3"
        raise CheckpointError(
            f"{tag_dir}: saved with ZeRO stage {saved} but this run uses stage {zero_stage}; "
            "set deepspeed.zero_stage back to the stage the checkpoint was saved with")


def shard_fingerprint(tag_dir: str) -> str:
    """Which checkpoint a conversion came from: its path and every shard's name and size.

    The DeepSpeed tag is often constant across steps, so the folder name alone cannot tell an
    earlier conversion from this one."""
    files = sorted((name, os.path.getsize(os.path.join(tag_dir, name))) for name in os.listdir(tag_dir)
                   if os.path.isfile(os.path.join(tag_dir, name)))
    return f"{os.path.abspath(tag_dir)}\n" + "\n".join(f"{n} {size}" for n, size in files)


def _convert_once(tag_dir: str, out_dir: str) -> None:
    """Convert into a temporary sibling and rename, so a crash never leaves a half folder in use."""
    fingerprint = shard_fingerprint(tag_dir)
    if _converted(out_dir, fingerprint):
        return  # this very checkpoint was converted already (e.g. by a restarted attempt)
    work_dir = os.path.dirname(out_dir)
    os.makedirs(work_dir, exist_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp = os.path.join(work_dir, f".tmp-{uuid.uuid4().hex}", os.path.basename(out_dir))
    try:
        _run_ds_to_universal(tag_dir, tmp)
        with open(os.path.join(tmp, DONE_MARKER), "w") as f:
            f.write(fingerprint)
        os.replace(tmp, out_dir)
        _write_latest(work_dir, os.path.basename(out_dir))
    except Exception as exc:  # noqa: BLE001 - any conversion failure becomes one typed error on all ranks
        if _converted(out_dir, fingerprint):
            return  # converters on nodes that share work_dir raced, and another one's copy is in place
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, _FAILED), "w") as f:
            f.write(f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(os.path.dirname(tmp), ignore_errors=True)


def _converted(out_dir: str, fingerprint: str) -> bool:
    """``out_dir`` holds a finished conversion of the checkpoint with this fingerprint."""
    try:
        with open(os.path.join(out_dir, DONE_MARKER)) as f:
            return f.read() == fingerprint
    except OSError:
        return False


def _write_latest(work_dir: str, tag: str) -> None:
    # ds_to_universal wrote the temporary folder's name; point 'latest_universal' at the real one.
    with open(os.path.join(work_dir, "latest_universal"), "w") as f:
        f.write(tag)


def _run_ds_to_universal(input_folder: str, output_folder: str) -> None:
    """Call DeepSpeed's converter in-process with the arguments its command line would build."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=input_folder, output_folder=output_folder,
        # 1 worker: no process pool (the trainer already runs inside a Ray actor; forking there
        # is fragile) and the checkpoint is read sequentially anyway.
        num_extract_workers=1, num_merge_workers=1,
        keep_temp_folder=False, strict=True,
        # A plain transformers model carries no universal_checkpoint_info (Megatron adds it);
        # ZeRO-DP-only checkpoints need nothing beyond the version tag it injects.
        inject_missing_state=True)
    # The converter prints progress bars; keep them out of the trainer's log unless it fails.
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            ds_to_universal.main(args)
    except BaseException as exc:
        tail = buf.getvalue()[-2000:]
        raise RuntimeError(f"{exc!r}; converter output: {tail}") from exc


def _raise_if_not_converted(out_dir: str) -> None:
    failed = os.path.join(out_dir, _FAILED)
    if os.path.isfile(failed):
        with open(failed) as f:
            reason = f.read()
        raise CheckpointError(
            f"converting the checkpoint to DeepSpeed's universal format failed ({reason}); "
            "resume on the world size it was saved with, or from an earlier checkpoint")
    if not os.path.isfile(os.path.join(out_dir, DONE_MARKER)):
        raise CheckpointError(
            f"{out_dir}: no converted universal checkpoint after the barrier; work_dir must be shared "
            "by every rank that relies on the converting rank (use a node-local converter per node)")
