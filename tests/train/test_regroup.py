"""The in-place re-form (worker/regroup.py) on real processes: a process group of three loses a
rank, and the two others form a new group and go on in the same processes, then lose one more.
The rank that leaves first is rank 0, which hosts the old group's store, or the last one."""

from __future__ import annotations

import os

import pytest
import ray

from orchestrator.train.worker import regroup
from orchestrator.train.worker.regroup import InPlace, Seat


class Rank:
    """One worker process in a gloo group, as Ray Train forms it."""

    def __init__(self, rank: int, world: int, port: int):
        import torch.distributed as dist

        self.train_rank = rank
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    def reform(self, leaving: list[int]):
        """Leave, or re-form without ``leaving``: (new rank, world, local rank, pid, sum of the train
        ranks over the new group) or None for a rank that left."""
        import torch
        import torch.distributed as dist

        seats = regroup.take_seats(self.train_rank, self.train_rank in leaving)
        plan = regroup.plan(seats, committed=True, min_workers=1, valid_counts=[1, 2, 3])
        member = plan.membership_of(self.train_rank)
        if member is None:
            regroup.leave_group()
            return None
        regroup.rejoin(member, plan.survivors[0], "gloo")
        total = torch.tensor([float(self.train_rank)])
        dist.all_reduce(total)
        return member.rank, dist.get_world_size(), member.local_rank, os.getpid(), float(total)

    def pid(self) -> int:
        return os.getpid()


@pytest.mark.parametrize("first_leaver", [0, 2])
def test_survivors_re_form_in_their_own_processes(ray_cluster, first_leaver):
    port = regroup.free_port()
    actors = [ray.remote(num_cpus=1)(Rank).remote(r, 3, port) for r in range(3)]
    pids = ray.get([a.pid.remote() for a in actors])

    first = ray.get([a.reform.remote([first_leaver]) for a in actors], timeout=120)
    survivors = [r for r in range(3) if r != first_leaver]
    assert first[first_leaver] is None
    assert [first[r][:3] for r in survivors] == [(0, 2, 0), (1, 2, 1)], "ranks keep their order; one node here"
    assert [first[r][3] for r in survivors] == [pids[r] for r in survivors], "no process was replaced"
    assert {first[r][4] for r in survivors} == {float(sum(survivors))}, "a collective over the new group"

    last = survivors[-1]
    second = ray.get([actors[r].reform.remote([last]) for r in survivors], timeout=120)
    assert second[1] is None and second[0][:2] == (0, 1) and second[0][4] == float(survivors[0])
    for a in actors:
        ray.kill(a)


def _seat(rank: int, leaving: bool = False, node: str = "n1") -> Seat:
    return Seat(rank, leaving, node, "10.0.0.1", 29500 + rank)


def test_a_plan_only_where_the_group_keeps_its_promises():
    seats = [_seat(0, node="a"), _seat(1, True, "b"), _seat(2, node="b"), _seat(3, node="a")]
    plan = regroup.plan(seats, committed=True, min_workers=1, valid_counts=[1, 3])
    assert isinstance(plan, InPlace) and plan.departed == (1,)
    assert plan.membership_of(3) == regroup.Membership(3, 2, 3, 1, in_place=True)  # second rank on node a
    assert plan.membership_of(2).local_rank == 0 and plan.membership_of(1) is None
    assert regroup.plan(seats, committed=False, min_workers=1, valid_counts=[3]) is None, "no commit: no resume point"
    assert regroup.plan(seats, committed=True, min_workers=4, valid_counts=[3]) is None, "below min"
    kept = regroup.plan(seats, committed=True, min_workers=1, valid_counts=[2, 4])  # 3 would break the batch
    assert [s.train_rank for s in kept.survivors] == [0, 2] and kept.departed == (1, 3), "rank 3 is released"
    assert regroup.plan(seats, committed=True, min_workers=3, valid_counts=[2, 4]) is None, "2 would be below min"
    assert regroup.plan([_seat(0), _seat(1)], committed=True, min_workers=1, valid_counts=[2]) is None, "none leaves"
    assert regroup.plan([_seat(0, True)], committed=True, min_workers=1, valid_counts=[1]) is None, "none stays"


def _with_headroom(seats: list[Seat], headroom: regroup.Headroom) -> list[Seat]:
    first = seats[0]
    return [Seat(first.train_rank, first.leaving, first.node, first.host, first.port, headroom), *seats[1:]]


def test_a_noticed_group_re_forms_wider_when_taking_idle_nodes_pays_for_the_dearer_re_form():
    seats = [_seat(0, node="a"), _seat(1, True, "b"), _seat(2, node="c")]  # 2 survivors
    valid = [1, 2, 3, 4]
    # 600 worker-s per loss: the next loss in 300 s for 2 workers; 2 idle workers added gain 2 x 300 s
    pays = regroup.Headroom(free_workers=2, own_bundles=2, worker_s_per_loss=600.0, extra_cost_s=20.0)
    assert regroup.plan(_with_headroom(seats, pays), True, 1, valid) is None, "re-forms with the idle nodes"
    # ... against (2 + 2) x 200 s: not worth a re-form 200 s dearer
    dear = regroup.Headroom(free_workers=2, own_bundles=2, worker_s_per_loss=600.0, extra_cost_s=200.0)
    assert isinstance(regroup.plan(_with_headroom(seats, dear), True, 1, valid), InPlace)
    unmeasured = regroup.Headroom(free_workers=1, own_bundles=2, worker_s_per_loss=None, extra_cost_s=None)
    assert regroup.plan(_with_headroom(seats, unmeasured), True, 1, valid) is None, "as a grow would, at once"
    # idle workers that no valid size can take (the batch rule): nothing to gain, stay in place
    assert isinstance(regroup.plan(_with_headroom(seats, pays), True, 1, [1, 2]), InPlace)
    assert regroup.Headroom(3, 2, 600.0, 20.0).added(2, [1, 2, 4, 8]) == 2


def test_a_noticed_group_stays_in_place_when_the_wider_size_stepped_no_faster():
    seats = [_seat(0, node="a"), _seat(1, True, "b"), _seat(2, node="c")]  # 2 survivors, 1 idle node
    slower = regroup.Headroom(1, 2, worker_s_per_loss=None, extra_cost_s=None, step_s=((2, 0.16), (3, 0.18)))
    assert isinstance(regroup.plan(_with_headroom(seats, slower), True, 1, [1, 2, 3]), InPlace)
    faster = regroup.Headroom(1, 2, worker_s_per_loss=None, extra_cost_s=None, step_s=((2, 0.16), (3, 0.11)))
    assert regroup.plan(_with_headroom(seats, faster), True, 1, [1, 2, 3]) is None


def test_spare_bundles_of_the_group_count_as_idle_once_the_plan_knows_who_stays():
    # Node b is under notice; rank 0 saw no free resources but 3 of the group's bundles on usable
    # nodes: ranks 0 and 2's, and one a rank released earlier still holds on its node.
    seats = [_seat(0, node="a"), _seat(1, True, "b"), _seat(2, node="c")]
    spare = regroup.Headroom(free_workers=0, own_bundles=3, worker_s_per_loss=None, extra_cost_s=None)
    assert spare.idle(2) == 1 and spare.added(2, [1, 2, 4]) == 0, "3 breaks the batch: nothing to add"
    assert isinstance(regroup.plan(_with_headroom(seats, spare), True, 1, [1, 2, 4]), InPlace)
    assert regroup.plan(_with_headroom(seats, spare), True, 1, [1, 2, 3]) is None, "3 keeps it: re-form wider"
    # Survivors released by the batch rule free their bundles too: 3 stay of 4, 2 fit, 2 go idle.
    four = [_seat(0, node="a"), _seat(1, True, "b"), _seat(2, node="c"), _seat(3, node="d")]
    released = regroup.Headroom(free_workers=0, own_bundles=3, worker_s_per_loss=None, extra_cost_s=None)
    assert released.added(2, [1, 2, 4]) == 0 and released.added(1, [1, 2, 4]) == 1
    kept = regroup.plan(_with_headroom(four, released), True, 1, [1, 2, 4])
    assert isinstance(kept, InPlace) and kept.departed == (1, 3), "no count above 2 fits the 3 usable bundles"


def test_the_journal_prices_a_wider_re_form_by_the_difference_of_the_two_costs():
    from orchestrator.train.driver.elastic import ResizeJournal

    journal = ResizeJournal()
    assert journal.widen_terms(10.0) == (None, None, ()), "no loss, no re-form, no step time yet"
    journal.formed(3, 0, 0.0, 1.0, 2.0)
    journal.reformed_in_place(10, 3, last_step_at=52.0, decided_at=52.5, departed=[2])
    journal.formed(2, 10, 53.0, 54.0, 54.5)  # in place: re-form 0.5 + load 1 + first step 0.5 = 2 s
    assert journal.widen_terms(54.5)[:2] == (pytest.approx(150.0), None), "no re-form with new processes yet"
    journal.left("shrink_notice", 20, 2, last_step_at=104.5)
    journal.failed(105.0, noticed=True)
    journal.formed(1, 20, 112.0, 122.0, 124.0)  # new processes: 7 + 10 + 2 = 19 s
    per_loss, extra, _ = journal.widen_terms(124.0)
    assert per_loss == pytest.approx((3 * 50 + 2 * 50) / 2)  # worker-seconds to the stops, 2 losses
    assert extra == pytest.approx(19.0 - 2.0)
