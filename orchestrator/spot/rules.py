"""The decision rules the trainer and the planner share, so that the planner predicts what the
trainer does: when a notice fits a checkpoint, the Young-Daly interval, and when adding workers
pays for the pause it costs (a grow at a checkpoint, or a wider re-form under a notice), judged on
how much faster the larger group steps."""

from __future__ import annotations

import math
from typing import Mapping

NOTICE_MARGIN = 1.25  # a preemption save starts only when 1.25 x its cost fits in the notice
# The trainer's mean time between work-losing interruptions before it has observed one
# (checkpoint/interval.py explains the choice).
PRIOR_MTBP_S = 2 * 3600.0


def notice_fits(notice_s: float, checkpoint_s: float) -> bool:
    """A loss with this notice checkpoints inside it and loses no step (the trainer's own rule)."""
    return notice_s > 0 and notice_s >= NOTICE_MARGIN * checkpoint_s


def young_daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Young (1974) / Daly (2006), first order: the interval sqrt(2 C M) between checkpoints."""
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)


def speedup(step_s: Mapping[int, float], world: int, grown: int) -> float:
    """How many times faster a group of ``grown`` workers steps than one of ``world`` (the global
    batch is the same): measured, where groups of both sizes have run; else in proportion to the
    workers, as data parallelism promises. Workers that share hardware, or a slow network between
    nodes, can make a larger group slower: a measured speedup of 1 or less never pays a pause."""
    now, then = step_s.get(world), step_s.get(grown)
    if now and then:
        return now / then
    return grown / world


def grow_pays(next_loss_s: float, world: int, added: int, grow_s: float, gain: float | None = None) -> bool:
    """Whether adding ``added`` workers to a group of ``world`` now gains more work than its pause.

    A grow stops every worker for ``grow_s``; the next loss re-forms the group anyway, and that
    re-form takes in the waiting capacity for free. Until then (``next_loss_s`` away, on average)
    the grown group, ``gain`` times as fast (``speedup``; (world + added) / world when not given),
    does gain * (next_loss_s - grow_s) of the current group's work against next_loss_s without it:
    the grow pays when (gain - 1) * next_loss_s > gain * grow_s, which for a gain in proportion to
    the workers is added * next_loss_s > (world + added) * grow_s. The nodes are paid for either
    way, so the same rule minimises cost per step."""
    if added < 1:
        return False
    gain = (world + added) / world if gain is None else gain
    return gain > 1 and (gain - 1) * next_loss_s > gain * grow_s


def widen_pays(worker_s_per_loss: float | None, survivors: int, added: int, extra_cost_s: float | None,
               gain: float | None = None) -> bool:
    """Under a notice with idle nodes: re-form with new processes, taking ``added`` workers in, rather
    than keep the ``survivors`` in place. The grow rule on the difference of the two re-forms' costs,
    with the next loss expected ``worker_s_per_loss / survivors`` away. Before either is measured
    (None) it widens, as a grow would at the next checkpoint anyway, with a pause of its own, unless
    the wider group was measured no faster (``gain``, as in ``grow_pays``)."""
    if added < 1 or (gain is not None and gain <= 1):
        return False
    if worker_s_per_loss is None or extra_cost_s is None:
        return True
    return grow_pays(worker_s_per_loss / survivors, survivors, added, extra_cost_s, gain)
