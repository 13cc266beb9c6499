"""Young–Daly interval: table-driven checks of the formula, the prior and the tracker."""

from __future__ import annotations

import math

import pytest

from orchestrator.contract import ENV_MTBP_S
from orchestrator.errors import PermanentError
from orchestrator.train.checkpoint.interval import (PRIOR_MTBP_S, Ewma, IntervalTracker, mtbp_from_env,
                                         young_daly_interval_steps)


@pytest.mark.parametrize("cost,mtbp,step,mn,mx,expected", [
    (10.0, 3600.0, 1.0, 1, None, 268),        # sqrt(2*10*3600) = 268.3
    (10.0, 3600.0, 2.0, 1, None, 134),
    (5.0, 10.0, 1.0, 1, None, 10),            # sqrt(100) = 10
    (0.5, 100.0, 0.25, 1, None, 40),          # sqrt(100) / 0.25
    (10.0, None, 1.0, 1, None, round(math.sqrt(2 * 10 * PRIOR_MTBP_S))),  # prior: 379
    (10.0, 0.0, 1.0, 1, None, 379),           # no observation yet is the prior too
    (0.0, 3600.0, 1.0, 1, None, 1),           # a free checkpoint: every step
    (0.0, 3600.0, 1.0, 5, None, 5),           # ... but not under min_steps
    (10.0, 3600.0, 1.0, 1, 100, 100),         # capped
    (1000.0, 86400.0, 0.1, 1, None, 131453),
])
def test_young_daly(cost, mtbp, step, mn, mx, expected):
    assert young_daly_interval_steps(cost, mtbp, step, mn, mx) == expected


@pytest.mark.parametrize("args", [(-1, 10, 1), (1, 10, 0), (1, 10, 1, 0), (1, 10, 1, 5, 4)])
def test_young_daly_rejects_bad_input(args):
    with pytest.raises(PermanentError):
        young_daly_interval_steps(*args)


def test_prior_is_two_hours():
    assert PRIOR_MTBP_S == 7200.0


@pytest.mark.parametrize("env,expected", [({}, None), ({ENV_MTBP_S: ""}, None), ({ENV_MTBP_S: "900"}, 900.0),
                                          ({ENV_MTBP_S: "0"}, None), ({ENV_MTBP_S: "inf"}, None)])
def test_mtbp_from_env(env, expected):
    assert mtbp_from_env(env) == expected


def test_mtbp_from_env_rejects_garbage():
    with pytest.raises(PermanentError, match=ENV_MTBP_S):
        mtbp_from_env({ENV_MTBP_S: "soon"})


def test_ewma():
    e = Ewma(0.5)
    assert [e.add(x) for x in (4.0, 8.0, 0.0)] == [4.0, 6.0, 3.0]


def test_tracker_recomputes_after_each_save():
    t = IntervalTracker("auto", mtbp_s=3600.0, initial_steps=10)
    assert t.save_cost_s is None and t.interval == 10
    assert [t.due(s) for s in (9, 10)] == [False, True]
    for _ in range(10):
        t.record_step(1.0)
    assert t.record_save(10, 10.0) == 268          # sqrt(2*10*3600)/1
    assert not t.due(277) and t.due(278)
    assert t.record_save(278, 20.0) == round(math.sqrt(2 * 13.0 * 3600))  # EWMA 0.3*20+0.7*10 = 13
    assert t.save_cost_s == pytest.approx(13.0)


def test_tracker_with_fixed_interval_never_changes():
    t = IntervalTracker(100)
    t.record_step(1.0)
    assert t.record_save(100, 50.0) == 100
    assert t.save_cost_s == 50.0  # still measured: the preemption deadline uses it
    assert t.due(200) and not t.due(199)


def test_tracker_uses_the_prior_without_observations():
    t = IntervalTracker("auto", initial_steps=5)
    t.record_step(2.0)
    assert t.record_save(5, 10.0) == round(math.sqrt(2 * 10 * PRIOR_MTBP_S) / 2.0)


@pytest.mark.parametrize("every", [0, -3, "sometimes"])
def test_tracker_rejects_bad_every(every):
    with pytest.raises(PermanentError, match="every_steps"):
        IntervalTracker(every)
