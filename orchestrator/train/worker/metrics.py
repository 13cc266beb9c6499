"""Per-step training metrics and the one collective per step that agrees on them.

Every rank accumulates raw sums over its micro-batches, on the device the model ran on: nothing in
a step waits for the device (a ``float()`` of a device tensor would stall the host until every
queued kernel ran). At the step's end one copy brings the sums to the host and one ``all_gather``
of a small vector turns them into global metrics *and* agrees on flags (a non-finite loss, a
fenced attempt, rank 0's "flush reports" and "checkpoint now") and on the preemption notice (any
rank's notice, the least time left, whether it is the attempt's own: ``PreemptionWatcher.decide``),
so every rank takes the same decision at the same step and no rank is left waiting in a collective.
Gathered rather than all-reduced because the notice needs MAX and MIN beside the sums; every rank
then sums the same rows in the same order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

# Indices into the synced vector: summed over ranks. Flags count ranks, so "> 0" means "some rank raised it".
_LOSS, _MLM_LOSS, _NSP_LOSS, _MICRO, _MLM_OK, _MLM_N, _NSP_OK, _NSP_N, _TOKENS = range(9)
FLAG_NONFINITE, FLAG_FENCED, FLAG_REPORT, FLAG_SAVE = 9, 10, 11, 12
_SAMPLES = 13  # the data ledger's sum of sample hashes (data/ledger.py): exact in float64
_SIZE = 14
# After them, taken as MAX over ranks: the preemption notice, MINUS the time left (MAX of it is the
# least time left; inf stays representable), the attempt-wide notice, and the gradient norm (already
# global, the same on every rank; -inf: none).
_STOP, _NEG_LEFT, _WIDE, _NORM = range(_SIZE, _SIZE + 4)
# Micro-batch outputs summed on their device, and where each lands in the vector.
_OUTPUT_SLOTS = {"loss": _LOSS, "mlm_loss": _MLM_LOSS, "nsp_loss": _NSP_LOSS, "mlm_ok": _MLM_OK, "mlm_n": _MLM_N,
                 "nsp_ok": _NSP_OK, "nsp_n": _NSP_N, "tokens": _TOKENS}


@dataclass
class StepAccumulator:
    """Raw sums of one rank over the micro-batches of one optimizer step."""

    started: float = field(default_factory=time.perf_counter)  # end of the previous step: wall throughput
    values: list[float] = field(default_factory=lambda: [0.0] * _SIZE + [0.0, -math.inf, 0.0, -math.inf])
    device_sums: dict = field(default_factory=dict)  # slot -> float64 tensor on the model's device

    def add_outputs(self, out: dict) -> None:
        """One micro-batch's outputs of worker/heads.MaskedPositionsPretraining, summed where they are."""
        for name in _OUTPUT_SLOTS:
            value = out.get(name)
            if value is None:
                continue
            self._add(_OUTPUT_SLOTS[name], value)
        self.values[_MICRO] += 1

    def _add(self, slot: int, value) -> None:
        import torch

        if isinstance(value, torch.Tensor):  # summed where it is: no wait for the device here
            value = value.detach().to(torch.float64).reshape(())
            total = self.device_sums.get(slot)
            self.device_sums[slot] = value if total is None else total + value
        else:
            self.values[slot] += float(value)

    def add_samples(self, sample_ids) -> None:
        """This rank's share of the step's ledger sum, for the ids it consumed."""
        from orchestrator.data.ledger import batch_sum

        self.values[_SAMPLES] += batch_sum(sample_ids)

    def raise_flag(self, index: int) -> None:
        self.values[index] = 1.0

    def set_grad_norm(self, norm) -> None:
        """DeepSpeed's global gradient norm of this step (a number or a device tensor; None: none)."""
        if norm is not None:
            self.values[_NORM] = 0.0
            self._add(_NORM, norm)

    def set_notice(self, noticed: bool, time_left_s: float, attempt_wide: bool) -> None:
        """This rank's view of a preemption notice (``PreemptionWatcher.local_view``)."""
        self.values[_STOP:_WIDE + 1] = [1.0 if noticed else 0.0, -time_left_s, 1.0 if attempt_wide else 0.0]

    def host_vector(self) -> list[float]:
        """Every value on the host: the device sums come over in one copy (the step's only wait)."""
        import torch

        v = list(self.values)
        by_device: dict = {}
        for slot, total in self.device_sums.items():
            by_device.setdefault(total.device, []).append(slot)
        for slots in by_device.values():  # one copy per device (on a GPU: the model's, and the host)
            for slot, value in zip(slots, torch.stack([self.device_sums[k] for k in slots]).tolist()):
                v[slot] += value
        if not math.isfinite(v[_LOSS]):
            v[FLAG_NONFINITE] = 1.0
        return v


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
    noticed: bool = False  # some rank has a preemption notice
    time_left_s: float = math.inf  # the least time left to any rank's deadline
    attempt_wide: bool = False  # some rank's notice is the attempt's own (file / SIGTERM), not a node's

    def as_row(self) -> dict:
        skip = ("nonfinite", "fenced", "save", "report", "sample_sum", "noticed", "time_left_s", "attempt_wide")
        return {k: v for k, v in self.__dict__.items() if v is not None and k not in skip}


def sync_step(acc: StepAccumulator, step: int, lr: float) -> StepMetrics:
    """Agree on one rank's sums and flags (a collective: every rank calls it once per step)."""
    v = _over_ranks(acc.host_vector())
    norm = v[_NORM]
    seconds = max(time.perf_counter() - acc.started, 1e-9)
    micro = max(v[_MICRO], 1.0)
    return StepMetrics(
        step=step, loss=v[_LOSS] / micro, mlm_loss=v[_MLM_LOSS] / micro,
        nsp_loss=(v[_NSP_LOSS] / micro) if v[_NSP_N] else None,
        mlm_accuracy=v[_MLM_OK] / max(v[_MLM_N], 1.0),
        nsp_accuracy=(v[_NSP_OK] / v[_NSP_N]) if v[_NSP_N] else None,
        tokens=int(v[_TOKENS]), tokens_per_s=v[_TOKENS] / seconds, lr=lr, seconds=seconds,
        nonfinite=v[FLAG_NONFINITE] > 0 or not math.isfinite(v[_LOSS]),
        fenced=v[FLAG_FENCED] > 0, save=v[FLAG_SAVE] > 0, report=v[FLAG_REPORT] > 0,
        grad_norm=norm if math.isfinite(norm) and norm >= 0 else None,
        sample_sum=int(v[_SAMPLES]), noticed=v[_STOP] > 0, time_left_s=-v[_NEG_LEFT], attempt_wide=v[_WIDE] > 0,
    )


def _over_ranks(local: list[float]) -> list[float]:
    """The sums (first ``_SIZE`` values) and maxima (the rest) over every rank, in one all_gather
    on the host side of the process group (gloo; the "cpu:gloo,cuda:nccl" group of a GPU run too)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    # float64 keeps token counts and the ledger sum exact and the mean loss stable to well below 1e-5.
    vec = torch.tensor(local, dtype=torch.float64)
    rows = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, vec)
    table = torch.stack(rows)
    return table[:, :_SIZE].sum(dim=0).tolist() + table[:, _SIZE:].max(dim=0).values.tolist()


def global_grad_norm(engine):
    """The norm DeepSpeed computed in the last optimizer step (ZeRO 1/2 always, stage 0 never): a
    number or a device tensor, read at the step's one copy to the host (``set_grad_norm``)."""
    return engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
