"""The loop every Ray Train worker runs (``train_loop_per_worker``) and what it needs: the DeepSpeed
engine, the pretraining heads, per-step metrics, preemption notices, and the errors that stop a run.
Never imports the driver.

``train_loop_per_worker`` is loaded on first use: the loop imports torch, and the driver imports
this package for ``PreemptionWatcher`` alone.
"""

from orchestrator.train.worker.errors import FencedError, NanLossError, PreemptedError
from orchestrator.train.worker.preemption import PreemptionWatcher, StopRequest

__all__ = ["FencedError", "NanLossError", "PreemptedError", "PreemptionWatcher", "StopRequest",
           "train_loop_per_worker"]


def __getattr__(name: str):
    if name == "train_loop_per_worker":
        from orchestrator.train.worker.loop import train_loop_per_worker

        return train_loop_per_worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
