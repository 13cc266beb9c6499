"""Checkpoint files are read as data, never as code: ``torch.load(weights_only=True)``.

A pickle can name any callable, so a full unpickle of a checkpoint file runs whatever its writer
chose: write access to a checkpoint bucket would be code execution on every worker. Every
checkpoint file is therefore read with torch's restricted unpickler, which builds tensors,
containers and plain values and refuses any other global, plus the few data classes DeepSpeed's
optimizer files hold (SAFE_GLOBALS) and numpy's array rebuild (RNG files written before RNG state
was stored as tensors and plain values).

DeepSpeed's own loaders (``engine.load_checkpoint``, the universal conversion, zero_to_fp32) call
``torch.load(weights_only=False)`` themselves and cannot be told otherwise. ``check_tree`` is the
gate in front of them: every ``*.pt`` file of a materialized checkpoint must load here first, so
the files DeepSpeed then unpickles are proven to hold nothing but tensors, plain values and
SAFE_GLOBALS. The local copy was verified against the manifest's digests, so what DeepSpeed reads is
what was checked.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from orchestrator.errors import CheckpointError


def safe_globals() -> list:
    """Classes a checkpoint may hold besides tensors and plain values: data only, no behaviour on load."""
    import numpy as np
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    numpy_arrays = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, *numpy_arrays]


def load(path: str | Path, map_location: Any = "cpu") -> Any:
    """One checkpoint file, read as data; CheckpointError when it holds anything else."""
    import torch

    mmap = zipfile.is_zipfile(path)  # the tensor data stays on disk: only the pickle is read here
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as exc:
        raise CheckpointError(
            f"{path} is not a plain checkpoint file and is not loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}). A checkpoint holds tensors and plain values only: if this "
            "checkpoint came from a trusted older bertctl, tell us; otherwise someone with write access to "
            "the checkpoint storage changed it - delete that step directory and resume from an older one") from None


def check_tree(root: str | Path) -> None:
    """Every ``*.pt`` file under root loads as data (see the module docstring); else CheckpointError."""
    for path in sorted(Path(root).rglob("*.pt")):
        load(path)
