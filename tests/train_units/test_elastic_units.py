"""The pieces of an elastic attempt that decide without a cluster: which failures re-form the
group inside the attempt, how a resize's record is put together, and which notice is whose."""

from __future__ import annotations

import pytest

from orchestrator.errors import DataError, ManifestError
from orchestrator.train.driver import elastic
from orchestrator.train.driver.elastic import ResizeJournal, capacity_lost, capacity_wait_s
from orchestrator.train.worker.errors import FencedError, GrowRequested, NanLossError, NodePreempted, PreemptedError
from orchestrator.train.worker.preemption import PreemptionWatcher, write_notice


class WorkerGroupFailure(Exception):
    """Shaped like Ray Train's WorkerGroupError: the per-rank failures by rank."""

    def __init__(self, *failures: BaseException):
        super().__init__("worker group failed")
        self.worker_failures = dict(enumerate(failures))


@pytest.fixture
def nodes(monkeypatch):
    """The cluster's dead nodes as the policy sees them, set by the test; no wait for a verdict."""
    dead: set[str] = set()
    monkeypatch.setattr(elastic, "dead_nodes", lambda: set(dead))
    monkeypatch.setattr(elastic, "NODE_DEATH_WAIT_S", 0.0)
    return dead


@pytest.mark.parametrize("failure", [NodePreempted("node under notice"), GrowRequested("room for more")])
def test_the_loops_own_capacity_changes_re_form(nodes, failure):
    assert capacity_lost(WorkerGroupFailure(failure, RuntimeError("peer gone")), set())


@pytest.mark.parametrize("failure", [NanLossError("loss is nan"), DataError("bad shard"), ManifestError([("spec.data", "bad")]),
                                     PreemptedError("the attempt's own notice"), FencedError("newer attempt"),
                                     MemoryError("out of memory")])
def test_the_runs_own_faults_end_the_attempt_even_beside_a_lost_node(nodes, failure):
    nodes.add("node-b")  # a node died too: the run's fault still decides
    assert not capacity_lost(WorkerGroupFailure(failure, RuntimeError("connection reset")), set())


def test_a_failed_collective_counts_as_lost_capacity_only_when_a_node_died(nodes):
    failure = WorkerGroupFailure(RuntimeError("gloo: connection reset by peer"))
    assert not capacity_lost(failure, set()), "every node alive: a crash, not lost capacity"
    nodes.add("node-a")
    assert not capacity_lost(failure, {"node-a"}), "a node dead before the group formed does not count"
    nodes.add("node-b")
    assert capacity_lost(failure, {"node-a"})


def test_a_noticed_shrink_record_has_its_pause_and_parts():
    journal = ResizeJournal()
    assert journal.formed(2, 0, 100.0, 101.0, 102.0) == [], "the first group is no resize"
    journal.left("shrink_notice", 12, 2, last_step_at=200.0)
    assert journal.pending_kind() == "shrink_notice"
    journal.failed(201.0)
    [record] = journal.formed(1, 12, started_at=205.0, loaded_at=209.0, first_step_at=209.5)
    assert record == {"n": 1, "kind": "shrink_notice", "from_world": 2, "to_world": 1, "last_step": 12,
                      "resumed_from_step": 12, "pause_s": 9.5, "detect_s": 1.0, "reform_s": 4.0, "load_s": 4.0,
                      "first_step_s": 0.5}


def test_a_group_lost_without_word_is_a_shrink_lost_from_the_last_size():
    journal = ResizeJournal()
    journal.formed(3, 0, 1.0, 2.0, 3.0)
    journal.failed(50.0)
    journal.formed(2, 8, 55.0, 58.0, 59.0)
    journal.failed(80.0)
    records = journal.formed(1, 16, 85.0, 88.0, 89.0)
    assert [(r["n"], r["kind"], r["from_world"], r["to_world"]) for r in records] == [
        (1, "shrink_lost", 3, 2), (2, "shrink_lost", 2, 1)]
    assert records[1]["last_step"] is None and records[1]["pause_s"] is None and records[1]["reform_s"] == 5.0


def test_a_re_form_waits_for_capacity_well_inside_the_heartbeat_timeout():
    assert capacity_wait_s(300.0) == elastic.CAPACITY_WAIT_S
    assert capacity_wait_s(60.0) == 30.0


def test_a_nodes_notice_is_the_nodes_and_the_notice_file_the_attempts(tmp_path):
    probe = PreemptionWatcher(30.0, str(tmp_path / "notice"), probes=[lambda: float("inf")])
    probe.poll(None)
    assert probe.requested() and not probe.attempt_wide
    notice = tmp_path / "notice-2"
    write_notice(str(notice))
    own = PreemptionWatcher(30.0, str(notice), probes=[lambda: None])
    own.poll(None)
    assert own.requested() and own.attempt_wide


def test_a_group_abandoned_before_its_first_step_keeps_one_record_of_the_whole_pause():
    journal = ResizeJournal()
    journal.formed(3, 0, 1.0, 2.0, 3.0)
    journal.left("shrink_notice", 33, 3, last_step_at=100.0)
    journal.failed(101.0)
    journal.abandoned()  # the group of 2 that started had a node noticed while it formed
    journal.failed(112.0)
    [record] = journal.formed(1, 33, started_at=118.0, loaded_at=124.0, first_step_at=125.0)
    assert (record["kind"], record["from_world"], record["to_world"]) == ("shrink_notice", 3, 1)
    assert record["pause_s"] == 25.0 and record["detect_s"] == 1.0 and record["reform_s"] == 17.0


def test_an_attempts_first_group_abandoned_is_no_resize():
    journal = ResizeJournal()
    journal.abandoned()
    journal.failed(10.0)
    assert journal.formed(2, 0, 11.0, 12.0, 13.0) == []


class _Side:
    def __init__(self):
        self.calls = 0

    def abandoned(self):
        self.calls += 1


def test_a_node_noticed_before_the_first_step_ends_the_group_without_a_save(tmp_path):
    from orchestrator.train.worker.elastic import leave_if_noticed

    quiet, side = PreemptionWatcher(30.0, str(tmp_path / "none"), probes=[lambda: None]), _Side()
    leave_if_noticed(quiet, side, 8)  # no notice: the group goes on to load and step
    leave_if_noticed(PreemptionWatcher(30.0, str(tmp_path / "none"), probes=[lambda: 1e18]), None, 8)  # fixed size
    assert side.calls == 0
    with pytest.raises(NodePreempted, match="from step 8"):
        leave_if_noticed(PreemptionWatcher(30.0, str(tmp_path / "none"), probes=[lambda: 1e18]), side, 8)
    assert side.calls == 1
    write_notice(str(tmp_path / "own"))
    with pytest.raises(PreemptedError, match="resumes from step 8"):
        leave_if_noticed(PreemptionWatcher(30.0, str(tmp_path / "own"), probes=[lambda: None]), side, 8)
    assert side.calls == 1, "the attempt's own notice ends the attempt: no re-form"


def test_a_start_is_cut_short_when_a_notice_holds_up_its_own_placement():
    from orchestrator.train.driver.start_guard import noticed

    groups = {"old": {"state": "CREATED", "bundles_to_node_id": {0: "n1"}},
              "new": {"state": "CREATED", "bundles_to_node_id": {0: "n2", 1: "n3"}},
              "gone": {"state": "REMOVED", "bundles_to_node_id": {0: "n3"}},
              "waiting": {"state": "PENDING", "bundles_to_node_id": {}}}
    assert noticed(groups, {"n3"}, {"old"}, draining_before={"n3"}) == ["new"]
    assert noticed(groups, {"n1"}, {"old"}, draining_before=set()) == ["waiting"], "a group that started before is left alone"
    assert noticed(groups, {"n1"}, {"old"}, draining_before={"n1"}) == [], "no notice since the start began"
    assert noticed(groups, {"n4"}, {"old", "waiting"}, draining_before=set()) == []


def test_the_failure_of_a_start_cut_short_is_retried_once(monkeypatch):
    from orchestrator.train.driver import start_guard

    monkeypatch.setitem(start_guard._cut_short, "starts", 1)
    assert start_guard.take_cut_short() and not start_guard.take_cut_short()


def test_a_grow_is_judged_on_the_attempts_own_loss_rate_and_re_form_cost():
    journal = ResizeJournal()
    journal.formed(4, 0, 0.0, 1.0, 2.0)
    assert journal.should_grow(4, 1, now=50.0)[0], "no loss yet: grow"
    journal.left("shrink_notice", 30, 4, last_step_at=32.0)  # 4 workers ran 30 s: 120 worker-seconds
    journal.failed(33.0)
    journal.formed(3, 30, started_at=40.0, loaded_at=50.0, first_step_at=52.0)  # re-form cost 7 + 10 + 2
    grow, why = journal.should_grow(3, 1, now=62.0)
    # 150 worker-seconds per loss: the next one 50 s away, less than the (3 + 1) x 19 s a grow costs.
    assert not grow and "50 s" in why and "19.0 s" in why
    grow, _ = journal.should_grow(3, 1, now=152.0)  # 100 s more without a loss: next one 140 s away
    assert grow


def test_a_grow_does_not_count_as_a_loss_and_its_cost_includes_ending_the_old_group():
    journal = ResizeJournal()
    journal.formed(2, 0, 0.0, 1.0, 2.0)
    journal.left("grow", 10, 2, last_step_at=12.0)
    journal.failed(15.0)
    journal.formed(3, 10, started_at=17.0, loaded_at=20.0, first_step_at=21.0)
    assert journal.losses == 0 and journal.should_grow(3, 1, now=30.0)[0]
    journal.failed(40.0)  # lost without word
    journal.formed(2, 10, started_at=45.0, loaded_at=49.0, first_step_at=50.0)
    assert journal.losses == 1
    # Re-form costs: the grow 3 (detect) + 2 + 3 + 1 = 9 s, the shrink 5 + 4 + 1 = 10 s (the median
    # taken: the upper one); worker-seconds 2 x 10 + 3 x 19 + 2 x 10 = 97: the next loss 48.5 s away.
    grow, why = journal.should_grow(2, 1, now=60.0)
    assert "97 worker-seconds" in why and "10.0 s" in why
    assert grow  # 48.5 s > (2 + 1) x 10 s


def test_a_group_lost_before_its_first_step_continues_the_record_of_the_pause():
    journal = ResizeJournal()
    journal.formed(3, 0, 1.0, 2.0, 3.0)
    journal.left("shrink_notice", 20, 3, last_step_at=50.0)
    journal.failed(51.0)
    journal.failed(60.0)  # the group of 2 that started lost a node without word before stepping
    [record] = journal.formed(1, 20, started_at=70.0, loaded_at=75.0, first_step_at=76.0)
    assert (record["kind"], record["from_world"], record["to_world"]) == ("shrink_notice", 3, 1)
    assert record["pause_s"] == 26.0 and record["detect_s"] == 1.0 and record["reform_s"] == 19.0
    assert journal.losses == 2


def test_an_attempts_first_group_lost_before_stepping_is_a_loss_but_no_resize():
    journal = ResizeJournal()
    journal.failed(10.0)  # e.g. its start cut short by a notice
    assert journal.formed(2, 0, 11.0, 12.0, 13.0) == [] and journal.losses == 1


def test_a_grow_cut_short_by_a_loss_no_longer_waits_for_its_larger_group():
    journal = ResizeJournal()
    journal.formed(2, 0, 1.0, 2.0, 3.0)
    journal.left("grow", 10, 2, last_step_at=20.0)
    journal.failed(21.0)
    assert journal.pending_kind() == "grow", "the policy waits a moment for the freed resources"
    journal.failed(30.0, noticed=True)  # a node of the group of 3 came under notice while it formed
    assert journal.pending_kind() == "interrupted"
    [record] = journal.formed(2, 10, started_at=35.0, loaded_at=38.0, first_step_at=39.0)
    # It came back no larger: what happened is the noticed loss (no step lost), not a grow.
    assert (record["kind"], record["from_world"], record["to_world"], record["pause_s"]) == ("shrink_notice", 2, 2, 19.0)
    assert journal.work_loss_mtbp_s(now=50.0) is None, "the grow's checkpoint had committed: nothing to redo"


def test_a_grow_after_an_in_place_shrink_settles_against_the_shrunk_group():
    journal = ResizeJournal()
    journal.formed(3, 0, 1.0, 2.0, 3.0)
    journal.reformed_in_place(10, 3, last_step_at=20.0, decided_at=20.5, departed=[2])
    [shrink] = journal.formed(2, 10, 21.0, 22.0, 23.0)
    assert (shrink["kind"], shrink["from_world"], shrink["to_world"], shrink["pause_s"]) == ("shrink_notice", 3, 2, 3.0)
    assert journal.in_place_state() == ({2}, False)
    grow, why = journal.should_grow(2, 1, now=25.0)
    assert grow and "no re-form with new worker processes" in why, "a 3 s in-place re-form prices no grow"
    journal.left("grow", 14, 2, last_step_at=30.0)
    journal.failed(31.0)
    assert journal.in_place_state() == (set(), False), "a new Ray Train group numbers its ranks afresh"
    assert journal.growing_from() == 2, "3 workers is a grow: the policy must not wait for a 4th"
    journal.failed(32.0)  # a node lost while the group of 3 formed: no larger group is coming
    assert journal.growing_from() is None


def test_a_grow_cut_short_that_still_grows_is_a_grow():
    journal = ResizeJournal()
    journal.formed(2, 0, 1.0, 2.0, 3.0)
    journal.left("grow", 10, 2, last_step_at=20.0)
    journal.failed(21.0)
    journal.failed(30.0)  # a node of the group of 4 lost without word while it formed
    [record] = journal.formed(3, 10, started_at=35.0, loaded_at=38.0, first_step_at=39.0)
    assert (record["kind"], record["from_world"], record["to_world"]) == ("grow", 2, 3)


def test_only_re_forms_that_redid_steps_shorten_the_auto_checkpoint_interval(monkeypatch):
    monkeypatch.setattr("orchestrator.train.driver.elastic.time.time", lambda: 1000.0)
    journal = ResizeJournal()  # the attempt starts at 1000
    journal.formed(3, 0, 1000.0, 1001.0, 1002.0)
    journal.left("shrink_notice", 30, 3, last_step_at=1040.0)  # saved inside the notice: resumes from 30
    journal.failed(1041.0)
    journal.formed(2, 30, 1045.0, 1049.0, 1050.0)
    assert journal.work_loss_mtbp_s(now=1100.0) is None, "a notice that fitted its checkpoint lost nothing"
    journal.left("shrink_notice", 60, 2, last_step_at=1120.0)  # too late to save: resumes from 50
    journal.failed(1121.0)
    journal.formed(1, 50, 1125.0, 1129.0, 1130.0)
    journal.failed(1200.0)  # lost without word: from the newest commit
    journal.formed(1, 70, 1205.0, 1209.0, 1210.0)
    assert journal.work_loss_mtbp_s(now=1300.0) == pytest.approx(300.0 / 2)


class Cluster:
    """Dead nodes and raylet answers, scripted per probe round, for capacity_lost's wait."""

    def __init__(self, answers: list[bool], dies_after: int | None = None):
        self.answers, self.dies_after, self.rounds = answers, dies_after, 0

    def dead(self) -> set[str]:
        return {"node-b"} if self.dies_after is not None and self.rounds >= self.dies_after else set()

    def every_node_answers(self) -> bool:
        self.rounds += 1
        return self.answers[min(self.rounds, len(self.answers)) - 1]


@pytest.mark.parametrize("answers, dies_after, lost, rounds", [
    ([True], 6, False, 2),                        # every raylet answers twice: a crash, no verdict awaited
    ([False], 3, True, 3),                        # a raylet is silent: wait, and Ray declares its node dead
    ([True, False, True, False, True, True], None, False, 6),  # only answers in a row count
])
def test_a_failure_with_every_node_answering_is_a_crash_without_waiting_for_a_verdict(
        monkeypatch, answers, dies_after, lost, rounds):
    cluster = Cluster(answers, dies_after)
    monkeypatch.setattr(elastic, "dead_nodes", cluster.dead)
    monkeypatch.setattr(elastic.node_probe, "every_node_answers", cluster.every_node_answers)
    monkeypatch.setattr(elastic.time, "sleep", lambda s: None)
    failure = WorkerGroupFailure(RuntimeError("gloo: connection reset by peer"))
    assert capacity_lost(failure, set(), wait_s=3600.0) is lost
    assert cluster.rounds == rounds


@pytest.mark.parametrize("fit, room", [(0, 0), (1, 0), (2, 2), (5, 2)])
def test_a_grow_adds_workers_only_up_to_a_count_that_keeps_the_global_batch(monkeypatch, fit, room):
    from orchestrator.train.worker.elastic import ElasticSide

    # A group of 2 of {min 1, max 4}, global batch 8, micro 2: 3 workers would break the batch rule.
    side = ElasticSide("journal", rank=1, world_size=2, max_workers=4, worker_resources={"CPU": 1.0}, batch=(8, 2))
    monkeypatch.setattr(side, "_workers_that_fit", lambda: fit)
    assert side._room() == room


def test_no_grow_to_a_size_whose_groups_stepped_no_faster_even_before_a_loss():
    journal = ResizeJournal()
    journal.formed(2, 0, 0.0, 1.0, 2.0)
    assert journal.should_grow(2, 1, now=10.0)[0], "nothing measured: grow"
    journal.measured(2, 0.16)
    journal.measured(3, 0.18)  # e.g. workers sharing cores: 3 step slower than 2
    grow, why = journal.should_grow(2, 1, now=10.0)
    assert not grow and "no faster" in why, why
    journal.measured(3, 0.10)  # a group of 3 that ran unhindered: each size keeps its best figure
    journal.measured(3, 0.40)  # ... not one slowed by a node starting beside it
    assert journal.should_grow(2, 1, now=10.0)[0]
    assert journal.widen_terms(10.0) == (None, None, ((2, 0.16), (3, 0.10)))


def test_a_group_reports_the_median_of_its_recent_steps_once_it_has_enough(monkeypatch):
    from orchestrator.train.worker import elastic as worker_elastic

    told = []

    class Journal:
        class measured:
            @staticmethod
            def remote(world, step_s):
                told.append((world, step_s))

    side = worker_elastic.ElasticSide("journal", rank=1, world_size=2, max_workers=4,
                                      worker_resources={"CPU": 1.0}, batch=(8, 2))
    side.journal = Journal()
    side.stepped(9.0)  # the group's first step (loading, warming up) is left out
    for seconds in [0.2] * 8 + [3.0]:  # one slow step among them: a checkpoint, a node starting
        side.stepped(seconds)
    side._tell_step_time()
    assert told == [], "9 steps are too few to judge a pause on"
    side.stepped(0.2)
    side._tell_step_time()
    assert told == [(2, 0.2)]
