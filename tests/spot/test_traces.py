"""Trace parsing and the replay schedule (pure Python, no cluster)."""

from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import PermanentError
from orchestrator.spot.replay import rate_per_node_hour, schedule, timeline_of
from orchestrator.spot.traces import load_trace

TRACES = Path(__file__).parents[2] / "orchestrator" / "spot" / "traces_data"  # a copy of ../shared/traces, kept with the package


@pytest.mark.parametrize("name, rate, peak", [("aws-p3-2xlarge-parcae.csv", 0.61, 32),
                                              ("aws-g4dn-xlarge-us-east-1c-bamboo.csv", 0.43, 12),
                                              ("aws-p2-xlarge-us-east-1e-bamboo.csv", 0.016, 10)])
def test_both_formats_give_the_rates_the_readme_states(name, rate, peak):
    trace = load_trace(TRACES / name)
    assert trace.peak == peak
    assert trace.preemptions_per_instance_hour() == pytest.approx(rate, abs=0.006)


def test_a_burst_at_one_time_is_one_step(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0,add,a\n0,add,b\n0,add,c\n5000,remove,a\n5000,remove,b\n9000,add,d\n")
    trace = load_trace(path)
    assert trace.times_s.tolist() == [0.0, 5.0, 9.0] and trace.available.tolist() == [3, 1, 2]
    times, sizes = trace.removal_times_and_sizes()
    assert times.tolist() == [5.0] and sizes.tolist() == [2]


def test_a_malformed_trace_names_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("0,add,a\n10,vanish,a\n")
    with pytest.raises(PermanentError, match="line 2"):
        load_trace(path)


def test_replay_compresses_time_and_keeps_the_rate_at_the_traces_size():
    trace = load_trace(TRACES / "aws-p3-2xlarge-parcae.csv")
    changes = schedule(trace, 32, hour_s=60.0)
    assert changes[-1].at_s == pytest.approx(trace.times_s[-1] / 60.0, abs=1e-6)  # one trace hour = 60 s
    assert sum(c.taken for c in changes) == 167
    assert rate_per_node_hour(changes, 32, 60.0) == pytest.approx(0.61, abs=0.01)
    small = schedule(trace, 4, hour_s=60.0)
    assert max(c.capacity for c in small) == 4 and all(c.taken >= 0 for c in small)
    line = timeline_of(small, 700.0)
    assert line.start + int(np.sum(line.deltas)) == small[-1].capacity
