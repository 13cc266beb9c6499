"""An elastic attempt's resizes, as its heartbeats report them: one 'resized' event each (the
trainer repeats them), the steps each lost, and their pauses and losses in the goodput."""

from __future__ import annotations

from orchestrator.contract import Heartbeat, Resize
from orchestrator.manager.auth import hash_token, new_token
from orchestrator.manager.heartbeats import apply_heartbeat
from orchestrator.manager.views import job_detail
from orchestrator.spec import parse_manifest

from tests.manager.conftest import make_manifest

NOTICED = Resize(n=1, kind="shrink_notice", from_world=2, to_world=1, last_step=12, resumed_from_step=12,
                 pause_s=9.5, detect_s=1.0, reform_s=4.0, load_s=4.0, first_step_s=0.5)
LOST = Resize(n=2, kind="shrink_lost", from_world=2, to_world=1, resumed_from_step=16, pause_s=None,
              reform_s=5.0, load_s=3.0, first_step_s=0.5)


def _running_job(store, tmp_path) -> str:
    job, _ = store.create_job(parse_manifest(make_manifest(tmp_path, max_steps=100)).to_dict(), "local", 1.0)
    assert store.start_attempt(job["id"], 1, hash_token(new_token()), 1.0)
    return job["id"]


def _beat(step: int, resizes=None) -> Heartbeat:
    return Heartbeat(attempt=1, step=step, loss=1.0, world_size=1, resizes=resizes)


def test_each_resize_is_one_event_with_the_steps_it_lost_and_counts_in_the_goodput(store, tmp_path):
    job_id = _running_job(store, tmp_path)
    for step in range(1, 13):  # two workers to step 12, then a node's notice
        apply_heartbeat(store, job_id, _beat(step), 10.0 + step)
    for step in range(13, 20):  # one worker from the notice's checkpoint (repeated: recorded once)
        apply_heartbeat(store, job_id, _beat(step, [NOTICED]), 30.0 + step)
    # grown again, then a node lost without notice: resumed from 16, so 17..19 were lost
    apply_heartbeat(store, job_id, _beat(17, [NOTICED, LOST]), 60.0)
    for step in range(18, 31):
        apply_heartbeat(store, job_id, _beat(step, [NOTICED, LOST]), 60.0 + step)

    events = store.events(job_id, type_="resized")
    assert [(e["data"]["n"], e["data"]["kind"], e["data"]["steps_lost"]) for e in events] == [
        (1, "shrink_notice", 0), (2, "shrink_lost", 3)]
    assert "2 -> 1 workers from step 12 after a 9.5 s pause, 0 step(s) lost" in events[0]["message"]
    goodput = job_detail(store, store.get_job(job_id), 100.0)["goodput"]
    assert (goodput["resizes"], goodput["resize_s"], goodput["steps_lost"]) == (2, 9.5, 3)
    assert goodput["attempts"][0]["resizes"] == 2
