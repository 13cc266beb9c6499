"""Per-step training metrics and the all-reduce per step that agrees on them.

Every rank accumulates raw sums over its micro-batches; one ``all_reduce`` per optimizer step
turns them into global metrics *and* carries flags (a non-finite loss, a fenced attempt, rank 0's
"flush reports" and "checkpoint now"), so every rank takes the same decision at the same step and
no rank is left waiting in a collective. Preemption notices are not among these flags: they are
agreed on by a second, separate collective after the step (``PreemptionWatcher.poll``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

# Indices into the synced vector. Flags are summed, so "> 0" means "some rank raised it".
_LOSS, _MLM_LOSS, _NSP_LOSS, _MICRO, _MLM_OK, _MLM_N, _NSP_OK, _NSP_N, _TOKENS = range(9)
FLAG_NONFINITE, FLAG_FENCED, FLAG_REPORT, FLAG_SAVE = 9, 10, 11, 12
_SAMPLES = 13  # the data ledger's sum of sample hashes (data/ledger.py): exact in float64
_SIZE = 14


@dataclass
class StepAccumulator:
    """Raw sums of one rank over the micro-batches of one optimizer step."""

    started: float = field(default_factory=time.perf_counter)  # end of the previous step: wall throughput
    values: list[float] = field(default_factory=lambda: [0.0] * _SIZE)

    def add_outputs(self, out: dict) -> None:
        """One micro-batch's outputs of worker/heads.MaskedPositionsPretraining."""
        stats = {k: float(out[k]) for k in ("mlm_ok", "mlm_n", "nsp_ok", "nsp_n", "tokens") if k in out}
        nsp = out.get("nsp_loss")
        self.add(float(out["loss"].detach()), float(out["mlm_loss"].detach()),
                 None if nsp is None else float(nsp.detach()), stats)

    def add(self, loss: float, mlm_loss: float, nsp_loss: float | None, stats: dict[str, float]) -> None:
        v = self.values
        v[_LOSS] += loss
        v[_MLM_LOSS] += mlm_loss
        v[_NSP_LOSS] += nsp_loss or 0.0
        v[_MICRO] += 1
        v[_MLM_OK] += stats["mlm_ok"]
        v[_MLM_N] += stats["mlm_n"]
        v[_NSP_OK] += stats.get("nsp_ok", 0.0)
        v[_NSP_N] += stats.get("nsp_n", 0.0)
        v[_TOKENS] += stats["tokens"]
        if not math.isfinite(loss):
            v[FLAG_NONFINITE] = 1.0

    def add_samples(self, sample_ids) -> None:
        """This rank's share of the step's ledger sum, for the ids it consumed."""
        from orchestrator.data.ledger import batch_sum

        self.values[_SAMPLES] += batch_sum(sample_ids)

    def raise_flag(self, index: int) -> None:
        self.values[index] = 1.0


@dataclass(frozen=True)
class StepMetrics:
    step: int
    loss: float
    mlm_loss: float
    nsp_loss: float | None
    mlm_accuracy: float
    nsp_accuracy: float | None
    tokens: int
    tokens_per_s: float
    lr: float
    seconds: float
    nonfinite: bool
    fenced: bool
    save: bool    # rank 0 decided a checkpoint is due (the auto interval is measured on rank 0 only)
    report: bool  # rank 0 asks every rank to flush its buffered rows to ray.train.report now
    grad_norm: float | None = None  # global 2-norm before clipping (None where DeepSpeed computes none)
    sample_sum: int = 0  # the step's ledger sum over every rank

    def as_row(self) -> dict:
        skip = ("nonfinite", "fenced", "save", "report", "sample_sum")
        return {k: v for k, v in self.__dict__.items() if v is not None and k not in skip}


def sync_step(acc: StepAccumulator, step: int, lr: float, grad_norm: float | None = None) -> StepMetrics:
    """All-reduce one rank's sums (a collective: every rank calls it once per step). ``grad_norm`` is
    already global (DeepSpeed reduces the gradients), so it is passed through, not reduced."""
    import torch
    import torch.distributed as dist

    # float64 keeps token counts exact and the mean loss stable to well below 1e-5.
    vec = torch.tensor(acc.values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(vec)
    v = vec.tolist()
    seconds = max(time.perf_counter() - acc.started, 1e-9)
    micro = max(v[_MICRO], 1.0)
    return StepMetrics(
        step=step, loss=v[_LOSS] / micro, mlm_loss=v[_MLM_LOSS] / micro,
        nsp_loss=(v[_NSP_LOSS] / micro) if v[_NSP_N] else None,
        mlm_accuracy=v[_MLM_OK] / max(v[_MLM_N], 1.0),
        nsp_accuracy=(v[_NSP_OK] / v[_NSP_N]) if v[_NSP_N] else None,
        tokens=int(v[_TOKENS]), tokens_per_s=v[_TOKENS] / seconds, lr=lr, seconds=seconds,
        nonfinite=v[FLAG_NONFINITE] > 0 or not math.isfinite(v[_LOSS]),
        fenced=v[FLAG_FENCED] > 0, save=v[FLAG_SAVE] > 0, report=v[FLAG_REPORT] > 0, grad_norm=grad_norm,
        sample_sum=int(v[_SAMPLES]),
    )


def global_grad_norm(engine) -> float | None:
    """The norm DeepSpeed computed in the last optimizer step (ZeRO 1/2 always, stage 0 never)."""
    norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
    if norm is None:
        return None
    value = float(norm)
    return value if math.isfinite(value) and value >= 0 else None
