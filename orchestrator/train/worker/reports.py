"""What a rank reports of a step: the metrics row (through Ray Train's report or the metrics relay)
and rank 0's heartbeat to the manager."""

from __future__ import annotations

import math
import time

from orchestrator.contract import CheckpointRef, Heartbeat, SkippedCheckpoint
from orchestrator.train.worker import metrics as M
from orchestrator.train.worker.progress import Progress


def step_row(m: M.StepMetrics, run: Progress, batch, saved, max_steps: int) -> dict:
    """One logged step: the synced metrics, this rank's sample ids and any checkpoint of the step."""
    row = {**m.as_row(), "tokens_seen": run.tokens, "max_steps": max_steps, "time": time.time(),
           "sample_ids": [int(i) for i in getattr(batch, "sample_ids", [])], "sample_digest": run.ledger or None}
    if saved is not None:
        row["checkpoint_step"] = saved.step
        row["checkpoint_stall_s"] = saved.seconds  # how long training waited for this save
    return row


def heartbeat(m: M.StepMetrics, run: Progress, identity, job, ckpts, world_size: int, elastic) -> Heartbeat:
    """Rank 0's heartbeat after a step (``ckpts``: its Checkpointer; ``elastic``: its ElasticSide or None)."""
    last = ckpts.last
    ckpt = CheckpointRef(step=last.step, uri=last.uri, world_size=last.world_size,
                         save_seconds=last.seconds) if last else None
    return Heartbeat(attempt=identity.attempt, status="running", step=m.step,
                     max_steps=job.spec.training.max_steps, loss=_finite(m.loss),
                     mlm_accuracy=m.mlm_accuracy, nsp_accuracy=m.nsp_accuracy, tokens_per_s=m.tokens_per_s,
                     lr=m.lr, tokens_seen=run.tokens, world_size=world_size, checkpoint=ckpt,
                     sample_digest=run.ledger or None, resumed_from_step=run.resumed_from,
                     checkpoint_seconds=ckpts.seconds_total,
                     resizes=(elastic.resizes or None) if elastic else None,
                     skipped_checkpoints=[SkippedCheckpoint(step=s, uri=u[:1000], reason=r[:500])
                                          for s, u, r in ckpts.skipped[:8]] or None)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
