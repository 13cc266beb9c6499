"""`checkpoint.every_steps: auto` — the Young–Daly interval from measured costs.

Young (1974) / Daly (2006): with checkpoint cost C and mean time between failures M, the
interval that minimises expected lost work plus checkpoint overhead is about sqrt(2 C M)
(first-order; accurate while C << M, which holds for any job worth checkpointing).

M counts only the interruptions that lost work: a preemption whose notice fitted a checkpoint
lost nothing, and saving more often would not have changed that. The manager passes the mean
time between such interruptions it has observed for this job in ``BERTCTL_MTBP_S``
(contract.ENV_MTBP_S; store.mtbp_s); an elastic attempt, whose losses end no attempt, takes its
own once one of its re-forms redid steps (driver/elastic.py ``work_loss_mtbp_s``). Before either
has observed any, ``PRIOR_MTBP_S`` is used:
2 hours, a deliberately pessimistic reading of public spot/preemptible GPU data (AWS reports
interruption rates under 5 % a month for most pools, but GPU pools in busy regions see notices
every few hours, and GCP spot/preemptible VMs are capped at 24 h). Guessing too short only
costs a few extra checkpoints (the interval grows as sqrt(M), so a 12x too-small M gives a
~3.5x too-short interval); guessing too long risks losing hours of work.
"""

from __future__ import annotations

import math
import os

from orchestrator.contract import ENV_MTBP_S
from orchestrator.errors import PermanentError
from orchestrator.spot.rules import PRIOR_MTBP_S, young_daly_interval_s
# Weight of the newest measurement: recent saves predict the next one (storage load drifts).
EWMA_ALPHA = 0.3


def young_daly_interval_steps(checkpoint_cost_s: float, mtbp_s: float | None, step_time_s: float,
                              min_steps: int = 1, max_steps: int | None = None) -> int:
    """round(sqrt(2 * C * MTBP) / step_time), clamped to [min_steps, max_steps]."""
    if checkpoint_cost_s < 0 or step_time_s <= 0:
        raise PermanentError(f"checkpoint cost must be >= 0 and step time > 0 "
                             f"(got {checkpoint_cost_s}, {step_time_s}); measure them first")
    if min_steps < 1 or (max_steps is not None and max_steps < min_steps):
        raise PermanentError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    mtbp = PRIOR_MTBP_S if mtbp_s is None or mtbp_s <= 0 else mtbp_s
    steps = round(young_daly_interval_s(checkpoint_cost_s, mtbp) / step_time_s)  # the planner's formula
    steps = max(min_steps, steps)
    return steps if max_steps is None else min(max_steps, steps)


def mtbp_from_env(environ=os.environ) -> float | None:
    """The manager's observed mean time between interruptions that lost work, or None (then the prior applies)."""
    raw = environ.get(ENV_MTBP_S)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise PermanentError(f"{ENV_MTBP_S}={raw!r} is not a number of seconds") from None
    return value if value > 0 and math.isfinite(value) else None


class Ewma:
    """Exponentially weighted moving average; the first sample is taken as is."""

    def __init__(self, alpha: float = EWMA_ALPHA):
        self.alpha = alpha
        self.value: float | None = None

    def add(self, x: float) -> float:
        self.value = x if self.value is None else self.alpha * x + (1 - self.alpha) * self.value
        return self.value


class IntervalTracker:
    """Measures step time and save cost and keeps the `auto` interval current.

    The loop calls ``record_step`` after each optimizer step and ``record_save`` after each
    committed save (which returns the new interval); ``due(step)`` says whether to save now.
    Until the first save is measured, ``initial_steps`` is used, so the first save comes early
    and gives a real cost.
    """

    def __init__(self, every_steps: int | str, mtbp_s: float | None = None, *, initial_steps: int = 50,
                 min_steps: int = 1, max_steps: int | None = None):
        if every_steps != "auto" and not (isinstance(every_steps, int) and every_steps >= 1):
            raise PermanentError(f"checkpoint.every_steps must be >= 1 or 'auto', got {every_steps!r}")
        self.auto = every_steps == "auto"
        self.mtbp_s = mtbp_s
        self.min_steps, self.max_steps = min_steps, max_steps
        self.interval = initial_steps if self.auto else int(every_steps)
        self.step_time = Ewma()
        self.save_cost = Ewma()
        self.last_save_step = 0

    @property
    def save_cost_s(self) -> float | None:
        """Estimated seconds of one save + commit (also what the preemption deadline is judged by)."""
        return self.save_cost.value

    def record_step(self, seconds: float) -> None:
        if seconds > 0:
            self.step_time.add(seconds)

    def record_save(self, step: int, seconds: float) -> int:
        self.save_cost.add(max(0.0, seconds))
        self.last_save_step = step
        if self.auto and self.step_time.value is not None:
            self.interval = young_daly_interval_steps(self.save_cost.value, self.mtbp_s, self.step_time.value,
                                                      self.min_steps, self.max_steps)
        return self.interval

    def due(self, step: int) -> bool:
        return step - self.last_save_step >= self.interval
