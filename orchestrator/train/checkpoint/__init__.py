"""Transactional checkpoints: storage side (``store``), collective side (``Checkpointer``), and the
pieces around them (async ``uploader``, ``snapshot`` engine, ``universal`` elastic resume, ``rng``
states, the Young-Daly ``interval``). Never imports the worker or the driver.

Importing this package imports no torch, DeepSpeed or Ray (``snapshot`` does: import it by name).
"""

from orchestrator.train.checkpoint.checkpointer import Checkpointer, Resume, SaveResult
from orchestrator.train.checkpoint.interval import IntervalTracker, mtbp_from_env
from orchestrator.train.checkpoint.store import (
    DS_TAG, MANIFEST, STATE, CheckpointStore, Committed, FileEntry, TrainState, attempt_dir_name, file_digest,
    step_dir_name,
)
from orchestrator.train.checkpoint.universal import ResumePlan, prepare_resume, universal_ds_config
from orchestrator.train.checkpoint.uploader import AsyncUploader

__all__ = [
    "DS_TAG", "MANIFEST", "STATE", "AsyncUploader", "CheckpointStore", "Checkpointer", "Committed", "FileEntry",
    "IntervalTracker", "Resume", "ResumePlan", "SaveResult", "TrainState", "attempt_dir_name", "mtbp_from_env",
    "prepare_resume", "file_digest", "step_dir_name", "universal_ds_config",
]
