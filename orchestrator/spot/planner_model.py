"""The planner's discrete-event model of one training run on spot capacity (numpy and stdlib only).

Events are the capacity changes of a ``Timeline`` (a noticed loss is seen ``notice_s`` before the
node goes, which is when the job reacts) and the job's own: checkpoint commits, the end of a
pause, the last step. Between events the job trains at ``1 / step_s(w)`` steps per second on its
``w`` workers (one per node); global batch is constant, so a step on fewer workers takes longer.

Two policies:

- ``relaunch`` (today's): any loss of one of the job's nodes ends the attempt. With a notice that
  fits a checkpoint (``notice_s >= 1.25 * checkpoint_s``, the trainer's own rule) the attempt
  saves first and loses nothing; without, it loses the steps since the last commit. The next
  attempt starts ``relaunch_s`` later on the nodes then held (at least ``min_workers``; else it
  waits for capacity) and keeps that size until the next loss. A loss among the nodes it starts on
  while it starts fails it too: the relaunch begins again.
- ``elastic``: a noticed loss checkpoints inside the notice and the survivors re-form in place
  (``checkpoint_s + reform_s``, nothing lost; as many of them as the batch rule allows, and idle
  capacity waits for a grow), or, when they would fall below ``min_workers``, or when the pool holds
  idle nodes worth the dearer re-form (the grow rule on the difference of the two costs), the group
  re-forms with new processes on every node the pool holds (``checkpoint_s + reform_s + load_s``); a loss
  without notice re-forms from the newest commit on every node the pool holds (``detect_s +
  reform_s + load_s``, the steps since it lost); returned capacity is taken at the next
  checkpoint boundary (``grow_s``) when the grow pays for its pause before the next loss
  (``grow_pays``, judged as the trainer does); a notice for a node of a group being formed starts
  it again (``reform_s``, nothing to save). Below ``min_workers`` it falls back to a relaunch.

Goodput = productive step time (steps kept) / wall, as the manager counts it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from orchestrator.errors import PermanentError
from orchestrator.spot.capacity import Timeline
from orchestrator.spot.rules import grow_pays, notice_fits, speedup, widen_pays

POLICIES = ("elastic", "relaunch")


@dataclass(frozen=True)
class Components:
    """Time of each part of a run, in seconds (defaults: bench/recovery.py on this machine)."""
    step_s_one: float               # one optimizer step on a single worker (global batch constant)
    step_overhead_s: float = 0.0    # per step on top of the data-parallel share (all-reduce)
    checkpoint_s: float = 2.0       # what training waits for one save
    relaunch_s: float = 19.3        # a whole relaunch: detect 4.5 + relaunch 9.6 + load 4.1 + first step 1.1
    detect_s: float = 4.5
    load_s: float = 4.1
    reform_s: float = 5.0           # re-forming the worker group on the survivors (bench/spot.py goal)
    grow_s: float = 5.0             # adding returned nodes at a checkpoint boundary
    # The last part of a relaunch, once its worker group holds its nodes (workers start, load, first
    # step): a node lost before then is none of the group's, so the start goes on. None: all of it.
    relaunch_placed_s: float | None = None
    # (world size, seconds per step) measured on a cluster (bench/spot.py); other sizes use the form
    measured_step_s: tuple[tuple[int, float], ...] = ()

    def step_s(self, workers: int) -> float:
        for size, seconds in self.measured_step_s:
            if size == workers:
                return seconds
        return self.step_s_one / workers + self.step_overhead_s


_TIME_NAMES = {"checkpoint": "checkpoint_s", "relaunch": "relaunch_s", "relaunch_placed": "relaunch_placed_s",
               "detect": "detect_s", "load": "load_s",
               "reform": "reform_s", "grow": "grow_s", "step_overhead": "step_overhead_s"}


def components_from(pairs: list[str], step_s_one: float = 0.0) -> Components:
    """``Components`` from ``NAME=SECONDS`` pairs (``bertctl plan --time``); the rest keep their defaults."""
    values: dict[str, float] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if name not in _TIME_NAMES or not 0 <= seconds < float("inf"):
            raise PermanentError(f"--time {pair!r}: give NAME=SECONDS with NAME one of {sorted(_TIME_NAMES)} "
                                 "and SECONDS >= 0")
        values[_TIME_NAMES[name]] = seconds
    return Components(step_s_one=step_s_one, **values)


@dataclass(frozen=True)
class Scenario:
    policy: str
    nodes: int
    min_workers: int
    max_steps: int
    interval_steps: int
    notice_s: float
    sizes: tuple[int, ...] = ()     # world sizes that keep the global batch (empty: any in [min, nodes])

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise PermanentError(f"policy {self.policy!r}: one of {list(POLICIES)}")
        if not 1 <= self.min_workers <= self.nodes or self.max_steps < 1 or self.interval_steps < 1:
            raise PermanentError("need 1 <= min_workers <= nodes, max_steps >= 1 and interval_steps >= 1")

    def fit(self, usable: int) -> int:
        """The largest world size the job can run on with ``usable`` nodes (0: below min_workers)."""
        usable = min(usable, self.nodes)
        if usable < self.min_workers:
            return 0
        if not self.sizes:
            return usable
        valid = [s for s in self.sizes if self.min_workers <= s <= usable]
        return max(valid) if valid else 0


@dataclass
class Outcome:
    wall_s: float = 0.0
    productive_s: float = 0.0
    steps_lost: float = 0.0
    node_s: float = 0.0             # node-seconds held (what a spot bill charges)
    finished: bool = False
    recoveries: dict[str, int] = field(default_factory=lambda: {"notice": 0, "no_notice": 0, "relaunch": 0, "grow": 0})

    @property
    def goodput(self) -> float:
        return self.productive_s / self.wall_s if self.wall_s > 0 else 0.0


class Run:
    """One run of a scenario over a capacity timeline; ``simulate`` drives it."""

    def __init__(self, sc: Scenario, comp: Components, rng: np.random.Generator, start_nodes: int):
        self.sc, self.comp, self.rng = sc, comp, rng
        self.out = Outcome()
        self.t = self.step = self.committed = self.pending_work = 0.0
        self.next_ckpt = float(sc.interval_steps)
        self.pool = start_nodes  # what the pool holds; the job can use up to sc.nodes of it
        self.usable = min(start_nodes, sc.nodes)
        self.w = sc.fit(self.usable)
        self.resume_at: float | None = None
        self.resume_action = ""
        self.start_due: float | None = None  # when a relaunch start waiting for nodes would have ended
        self.grow_pending = False
        # This attempt's record, as the trainer's resize journal keeps it: losses, worker-seconds, and
        # what each re-form with new worker processes cost (a grow's price: their median). A noticed
        # loss re-forms in place in the trainer and is not one of them.
        self.losses, self.worker_s, self.reform_costs = 0, 0.0, []
        self.sizes_run: set[int] = set()  # the group sizes this attempt has trained at (their speed is known)

    # -- training between events ----------------------------------------------------------------

    def advance(self, t_end: float) -> None:
        while self.t < t_end and not self.out.finished:
            if self.resume_at is not None:
                if self.resume_at > t_end:
                    return self._idle(t_end)
                self._idle(self.resume_at)
                self._resume()
            elif self.w == 0:
                return self._idle(t_end)
            else:
                self._train(t_end)

    def _idle(self, until: float) -> None:
        self.out.node_s += self.usable * (until - self.t)
        self.t = until

    def _train(self, t_end: float) -> None:
        step_s = self.comp.step_s(self.w)
        self.sizes_run.add(self.w)
        boundary = min(self.next_ckpt, float(self.sc.max_steps))
        needed = (boundary - self.step) * step_s
        dt = min(needed, t_end - self.t)
        self.out.node_s += self.usable * dt
        self.worker_s += self.w * dt
        self.t += dt
        self.pending_work += dt
        self.step = boundary if dt == needed else self.step + dt / step_s
        if dt < needed:
            return
        if self.step >= self.sc.max_steps:
            self._commit()
            self.out.finished, self.out.wall_s = True, self.t
            return
        self._pause(self.comp.checkpoint_s, "commit")

    def _pause(self, seconds: float, action: str) -> None:
        self.resume_at, self.resume_action = self.t + seconds, action

    def _resume(self) -> None:
        action, self.resume_at = self.resume_action, None
        if action == "commit":
            self._commit()
            self.next_ckpt = self.step + self.sc.interval_steps
            if self.grow_pending:
                self._grow_if_it_pays()
        elif action == "restart":
            self.w = self.sc.fit(self.usable)
            self.next_ckpt = self.step + self.sc.interval_steps

    def _grow_if_it_pays(self) -> None:
        """The trainer's rule (``grow_pays``) on what the attempt has seen: worker-seconds per loss and
        the median cost of its re-forms with new processes (before its first loss, or before such a
        re-form, it grows). A grow that does not pay leaves the capacity to the next re-form, which
        takes it in."""
        target = self.sc.fit(self.usable)
        next_loss_s = self.worker_s / self.losses / self.w if self.losses else math.inf
        cost_s = statistics.median_high(self.reform_costs) if self.reform_costs else 0.0
        if target <= self.w:
            self.grow_pending = False
        elif grow_pays(next_loss_s, self.w, target - self.w, cost_s, self._gain(self.w, target)):
            self.grow_pending = False
            self.out.recoveries["grow"] += 1
            self.w = target
            self.reform_costs.append(self.comp.grow_s)
            self._pause(self.comp.grow_s, "")

    def _commit(self) -> None:
        self.committed = self.step
        self.out.productive_s += self.pending_work
        self.pending_work = 0.0

    # -- capacity events ------------------------------------------------------------------------

    def _set_pool(self, delta: int) -> int:
        """Apply a capacity change; returns the change in nodes the job could use."""
        before = self.usable
        self.pool += delta
        self.usable = max(0, min(self.pool, self.sc.nodes))
        return self.usable - before

    def lose(self, taken: int, noticed: bool) -> None:
        before = self.usable
        gone = -self._set_pool(-taken)
        if self.resume_at is not None and self.resume_action == "restart":
            return self._lost_while_restarting(before, gone, noticed)
        # Which of the held nodes go is random: the job's w of them, or idle ones it has not grown into.
        hit = int(self.rng.hypergeometric(self.w, before - self.w, gone)) if self.w and gone else 0
        if hit == 0 or self.out.finished:
            return
        self.losses += 1
        if noticed and self.sc.policy == "elastic" and self.resume_at is not None and not self.resume_action:
            return self._noticed_while_forming()
        if noticed:
            self._commit()  # the notice's save: nothing lost
        else:
            self.out.steps_lost += self.step - self.committed
            self.step, self.pending_work = self.committed, 0.0
        self.next_ckpt = self.step + self.sc.interval_steps
        kept = self.sc.fit(self.w - hit)  # survivors the batch rule lets the group keep in place
        if noticed and self.sc.policy == "elastic" and kept > 0 and not self._widen_pays(kept):
            return self._shrink_in_place(kept)
        # A group re-formed with new processes takes every node the pool holds, idle ones too.
        reformed = self.sc.fit(self.usable)
        if self.sc.policy == "relaunch" or reformed == 0:
            return self._relaunch(noticed)
        self.w, self.grow_pending = reformed, False
        self.out.recoveries["notice" if noticed else "no_notice"] += 1
        c = self.comp
        self.reform_costs.append(c.reform_s + c.load_s)
        self._pause((c.checkpoint_s if noticed else c.detect_s) + c.reform_s + c.load_s, "")

    def _widen_pays(self, survivors: int) -> bool:
        """The trainer's choice under a notice (worker/regroup.py ``Headroom``): re-form with new
        processes, taking the idle nodes in, when the grow rule says the added workers gain more than
        that re-form costs beyond one in place; judged on the losses before this one, and taken
        before anything is measured, as a grow is."""
        losses_before = self.losses - 1
        per_loss = self.worker_s / losses_before if losses_before else None
        extra_s = (max(0.0, statistics.median_high(self.reform_costs) - self.comp.reform_s)
                   if self.reform_costs else None)
        wider = self.sc.fit(self.usable)
        return widen_pays(per_loss, survivors, wider - survivors, extra_s, self._gain(survivors, wider))

    def _gain(self, world: int, grown: int) -> float | None:
        """How many times faster a group of ``grown`` steps than one of ``world``, as the trainer
        knows it (rules.speedup): the step-time model of the sizes this attempt has trained at."""
        if grown <= world:
            return None
        return speedup({n: self.comp.step_s(n) for n in self.sizes_run}, world, grown)

    def _shrink_in_place(self, survivors: int) -> None:
        """The trainer's survivors re-form in place (worker/regroup.py): no new process, so the
        group is its survivors alone, and capacity the pool holds beyond them waits for a grow."""
        self.w = survivors
        self.grow_pending = self.sc.fit(self.usable) > survivors
        self.out.recoveries["notice"] += 1
        self._pause(self.comp.checkpoint_s + self.comp.reform_s, "")

    def _noticed_while_forming(self) -> None:
        """A notice for a node of the group being formed (after a shrink or for a grow): its start
        begins again without the node (driver/start_guard.py), with nothing to save; the trainer
        keeps one resize record for the whole pause."""
        reformed = self.sc.fit(self.usable)
        if reformed == 0:
            return self._relaunch(noticed=True)
        self.w = reformed
        self.resume_at = max(self.resume_at, self.t + self.comp.reform_s)

    def _lost_while_restarting(self, before: int, gone: int, noticed: bool) -> None:
        """A relaunched attempt holds the nodes it starts on: losing one of them fails that attempt
        as well, and the manager relaunches again (bench/spot.py saw it: a second node gone while the
        first relaunch started cost a second relaunch). An elastic attempt told of the loss by a
        notice only starts its worker group again, without the node (driver/start_guard.py)."""
        placed = self._placed_s()
        if placed is not None and self.resume_at - self.t > placed:
            return self._lost_before_placement()
        starting = self.sc.fit(before)
        hit = int(self.rng.hypergeometric(starting, before - starting, gone)) if starting and gone else 0
        if hit == 0 or self.out.finished:
            return
        self.losses += 1
        if not self.sc.fit(self.usable):
            self.resume_at = None  # waits for capacity; gain() relaunches
        elif self.sc.policy == "elastic" and noticed:
            self.resume_at = max(self.resume_at, self.t + self.comp.reform_s)
        else:
            self._relaunch(noticed=False)  # nothing to save: the attempt had not stepped

    def _placed_s(self) -> float | None:
        """The placed part of a relaunch's start; None when unset (a loss at any time fails the start)."""
        placed = self.comp.relaunch_placed_s
        return None if placed is None else min(placed, self.comp.relaunch_s)

    def _lost_before_placement(self) -> None:
        """A relaunched attempt's group holds its nodes only for the last part of its start
        (``relaunch_placed_s``): a node lost earlier is none of its own. The start goes on, and waits
        for enough nodes if the pool now holds too few (bench/spot.py saw attempts survive losses
        early in their start, and fail only on those near its end)."""
        if not self.sc.fit(self.usable):
            self.start_due, self.resume_at = self.resume_at, None

    def _start_left(self) -> float:
        """A relaunch start's time once its nodes are there: all of it, or for a start that waited
        after losing a node before its group was placed, what was left but at least the placed part."""
        due, self.start_due = self.start_due, None
        return self.comp.relaunch_s if due is None else max(due - self.t, self._placed_s() or 0.0)

    def _relaunch(self, noticed: bool) -> None:
        self.out.recoveries["relaunch"] += 1
        self.w, self.losses, self.worker_s, self.reform_costs = 0, 0, 0.0, []  # a new attempt, a new record
        self.start_due = None
        if self.sc.fit(self.usable):
            self._pause((self.comp.checkpoint_s if noticed else 0.0) + self.comp.relaunch_s, "restart")
        else:  # the new attempt waits for enough nodes; their return starts it (gain), as one relaunch
            self.resume_at = None

    def gain(self, returned: int) -> None:
        self._set_pool(returned)
        if self.out.finished:
            return
        if self.w == 0 and self.resume_at is None and self.sc.fit(self.usable):
            # The attempt relaunched at the loss waited for enough nodes: it starts now (no new relaunch).
            self._pause(self._start_left(), "restart")
        elif self.sc.policy == "elastic" and self.w and self.sc.fit(self.usable) > self.w:
            self.grow_pending = True


def simulate(sc: Scenario, comp: Components, timeline: Timeline, rng: np.random.Generator) -> Outcome:
    """Run the scenario until max_steps or the timeline's horizon (then ``finished`` is False)."""
    run = Run(sc, comp, rng, timeline.start)
    noticed = notice_fits(sc.notice_s, comp.checkpoint_s)
    # A noticed loss is acted on when the notice arrives: shift drops earlier by the notice.
    shift = np.where(timeline.deltas < 0, sc.notice_s if noticed else 0.0, 0.0)
    times = np.maximum(timeline.times_s - shift, 0.0)
    order = np.argsort(times, kind="stable")
    for t, delta in zip(times[order], timeline.deltas[order]):
        run.advance(float(t))
        if run.out.finished:
            break
        if delta < 0:
            run.lose(int(-delta), noticed)
        else:
            run.gain(int(delta))
    if not run.out.finished:
        run.advance(timeline.horizon_s)
    if not run.out.finished:
        run.out.wall_s = run.t
    return run.out
