"""Test aid: the full training state of a rank group, gathered around a save or a load.

``full_state(engine)`` holds, per parameter, the full fp32 weight and Adam moments gathered across
the ZeRO partitions (so padding and partition boundaries do not matter), plus Adam's step counts:
an elastic resume can then be checked for exactly the state that was saved on another world size.
Gathering is collective, so every rank calls it.

``train_loop_dumping_state(prefix, config)`` is the production worker loop with one addition, for
tests that run the real trainer (tests/chaos/test_elastic.py): rank 0 writes
``<prefix>-saved-stepN.pt`` right before the checkpoint of step N is staged and
``<prefix>-loaded-stepN.pt`` right after it was restored. A test puts it in place of
``orchestrator.train.worker.loop.train_loop_per_worker`` (bound to a prefix with
``functools.partial``); the Ray workers import this module by name (Ray puts the driver's
working directory, the repository root, on their ``sys.path``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.train.worker import loop


def full_state(engine) -> dict:
    """Collective: {"params": {name: {fp32, exp_avg, exp_avg_sq}}, "adam_steps": [...]}."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO-1/2 link the moments to parameters at the first step, not at a load
        link()
    params = {}
    for name, p in engine.module.named_parameters():
        params[name] = {
            "fp32": safe_get_full_fp32_param(p).detach().cpu().clone(),
            "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").detach().cpu().clone(),
            "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").detach().cpu().clone(),
        }
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    steps = sorted({int(s["step"]) for s in inner.state.values() if "step" in s})
    return {"params": params, "adam_steps": steps}


def dump(prefix: str, when: str, step: int, engine, rank: int, world_size: int) -> None:
    """Collective: every rank gathers, rank 0 writes ``<prefix>-<when>-stepN.pt``."""
    import torch

    state = full_state(engine) | {"world_size": world_size, "step": step}
    if rank == 0:
        torch.save(state, f"{prefix}-{when}-step{step:08d}.pt")


class DumpingWorker(loop.Worker):
    """The production Worker, dumping the full state right after a restore and before a save."""

    def __init__(self, config: dict[str, Any], prefix: str):
        super().__init__(config)
        self.prefix = prefix

    def _restore(self, resume, plan):
        state = super()._restore(resume, plan)
        dump(self.prefix, "loaded", state.step, self.engine, self.rank, self.world_size)
        return state

    def _save(self, run):
        dump(self.prefix, "saved", run.step, self.engine, self.rank, self.world_size)
        return super()._save(run)


def train_loop_dumping_state(prefix: str, config: dict[str, Any]) -> None:
    """``loop.train_loop_per_worker`` with ``DumpingWorker``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop.log.info("timing: worker_start=%.3f", time.time())
    DumpingWorker(config, prefix).run()
