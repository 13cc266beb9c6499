"""Test aid: the production worker loop with weights that overflow fp32 in the first forward pass.

A manifest can no longer ask for such weights (``model.overrides.initializer_range`` must lie in
(0, 1)), so the NaN-loss test puts ``train_loop_with_poisoned_weights`` in place of
``orchestrator.train.worker.loop.train_loop_per_worker``; the Ray workers import this module by
name (the repository root is on their ``sys.path``).
"""

from __future__ import annotations

from typing import Any

from orchestrator.train.worker import loop

POISON = 1e30  # times a weight of order 1e-2: activations of order 1e28 square past fp32's 3.4e38


class PoisonedWorker(loop.Worker):
    def _build_model(self, index):
        import torch

        model = super()._build_model(index)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(POISON)
        return model


def train_loop_with_poisoned_weights(config: dict[str, Any]) -> None:
    PoisonedWorker(config).run()
