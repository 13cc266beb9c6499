"""A DeepSpeed checkpoint engine that copies state in memory and writes files in the background.

With ``checkpoint.async_upload`` the step should wait only for what must be consistent: the
values of the parameters, optimizer moments and scheduler at the checkpointed step. DeepSpeed's
own engine serializes every shard with ``torch.save`` inside ``save_checkpoint``, which is most
of the remaining stall once uploads are in the background. This engine takes a host copy of
each state dict instead (tensors copied, containers rebuilt, so later in-place updates of the
live optimizer state cannot leak into the snapshot) and hands the ``torch.save`` to one writer
thread. ``drain`` waits for every file of the checkpoint; the uploader calls it before it lists
the staging directory, so no half-written file is ever hashed or uploaded.

Loading is DeepSpeed's: the files are ordinary ``torch.save`` files on CPU.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from orchestrator.errors import CheckpointError


def host_copy(value: Any) -> Any:
    """Tensors copied to CPU memory of their own size, dicts/lists/tuples rebuilt, others as is.

    ``clone`` of a view allocates only the view (``copy.deepcopy`` would copy ZeRO's whole flat
    buffer once per parameter); ``to("cpu", copy=True)`` also moves GPU state off the device.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return type(value)((k, host_copy(v)) for k, v in value.items())
    if isinstance(value, list):
        return [host_copy(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(host_copy(v) for v in value)
    return value


class SnapshotCheckpointEngine(TorchCheckpointEngine):
    """``save`` returns after an in-memory copy; one background thread does the ``torch.save``."""

    def __init__(self, config_params=None):
        super().__init__(config_params)
        self.name = "BertctlSnapshotCheckpointEngine"
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-write")
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Future]] = []

    def save(self, state_dict, path: str) -> None:
        snapshot = host_copy(state_dict)
        fut = self._writer.submit(torch.save, snapshot, path,
                                  _use_new_zipfile_serialization=self.zipfile_serialization)
        with self._lock:
            self._pending.append((path, fut))

    def preserves_storage_sharing(self) -> bool:
        # host_copy already gives every tensor its own compact storage; DeepSpeed's extra clone
        # (for the same reason) would double the copy inside the step.
        return False

    def drain(self, timeout_s: float | None = None) -> None:
        """Wait for every submitted file; CheckpointError names the ones that failed or are late."""
        with self._lock:
            pending, self._pending = self._pending, []
        problems = []
        for path, fut in pending:
            try:
                fut.result(timeout=timeout_s)
            except TimeoutError:
                problems.append(f"{path}: still being written after {timeout_s} s")
            except Exception as exc:  # noqa: BLE001 - reported together below
                problems.append(f"{path}: {type(exc).__name__}: {exc}")
        if problems:
            raise CheckpointError("writing the checkpoint's local files failed, so it stays uncommitted: "
                                  + "; ".join(problems[:5]) + " - check that the scratch directory exists, is writable and has free space")

    def close(self) -> None:
        self._writer.shutdown(wait=True)


def install(engine) -> SnapshotCheckpointEngine:
    """Swap the engine's checkpoint engine (same serialization setting) for a snapshotting one."""
    current = engine.checkpoint_engine
    snap = SnapshotCheckpointEngine()
    snap.zipfile_serialization = getattr(current, "zipfile_serialization", snap.zipfile_serialization)
    engine.checkpoint_engine = snap
    return snap
