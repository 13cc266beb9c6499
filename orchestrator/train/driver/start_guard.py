"""A worker group of an elastic attempt never waits for a node under notice while it starts.

The scaling policy counts only nodes not under notice (driver/ray_policies.py), but a node can come
under notice after it was counted, while the group starts. Ray then starts no new worker process
on that node, and Ray Train waits for the group's actors without a time limit: the start hangs until
the node is gone at its deadline (30-120 s), and only then re-forms.

``StartOnLiveNodes`` watches each start of the group. When a bundle of the start's placement
group sits on a node under notice, or the placement group still waits for room while a node came
under notice since the start began (the room it was sized for may be that node's: Ray Train would
wait 60 s for it), it removes that placement group: the start fails at once (Ray Train's
``WorkerGroupStartupFailedError`` or ``...TimeoutError``, which its controller retries), and the
next start is sized on the nodes not under notice. Seen: a second notice 4 s after a first one
held the re-form for 44 s (actors waiting on the noticed node) and for 65 s (the placement's 60 s
wait). A group that has started is left alone: its workers hear of the notice themselves
(worker/elastic.py ``leave_if_noticed``, and the checkpoint inside the notice after a step).

This module imports Ray Train's internals; only ``launch.build_trainer`` imports it, for an
elastic attempt.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import ray
from ray.train.v2._internal.execution.callback import WorkerGroupCallback

from orchestrator.train.driver.elastic import draining_nodes

log = logging.getLogger("bertctl.train.elastic")

POLL_S = 0.5
# Starts this controller process cut short, read by the failure policy (both live in the controller's
# process, and Ray pickles the policy and the callbacks separately, so they share no object).
_cut_short = {"starts": 0}


def take_cut_short() -> bool:
    """True once per start that StartOnLiveNodes cut short (its failure is capacity, not a fault)."""
    if _cut_short["starts"] <= 0:
        return False
    _cut_short["starts"] -= 1
    return True


class StartOnLiveNodes(WorkerGroupCallback):
    """While a group starts: remove its placement group if a node of it comes under notice."""

    def __init__(self, poll_s: float = POLL_S) -> None:
        self.poll_s = poll_s

    @contextmanager
    def on_worker_group_start(self):
        try:
            job = ray.get_runtime_context().get_job_id()
            earlier = (set(_placement_groups(job)), draining_nodes())  # the start's own placement group is created now
        except Exception as exc:  # noqa: BLE001 - a GCS hiccup must not fail the start: it goes unwatched
            log.warning("cannot read the placement groups or the draining nodes; this start is not watched: %s", exc)
            yield
            return
        stop, lock = threading.Event(), threading.Lock()
        watch = threading.Thread(target=self._watch, args=(job, earlier, stop, lock), name="start-guard", daemon=True)
        watch.start()
        try:
            yield
        finally:
            with lock:  # a removal is never half done when the start ends
                stop.set()
            watch.join(timeout=5)

    def _watch(self, job: str, earlier: tuple[set[str], set[str]], stop: threading.Event, lock: threading.Lock) -> None:
        while not stop.wait(self.poll_s):
            with lock:
                if stop.is_set():
                    return
                try:
                    noticed = _noticed_starts(job, earlier)
                except Exception as exc:  # noqa: BLE001 - a GCS hiccup: look again at the next poll
                    log.warning("cannot read the placement groups or the draining nodes: %s", exc)
                    continue
                if noticed:
                    _cut_start_short(noticed)
                    return


def _placement_groups(job: str) -> dict[str, dict]:
    """This job's placement groups by id (a placement group's id ends with its job's id)."""
    from ray.util.placement_group import placement_group_table

    return {pg: info for pg, info in placement_group_table().items() if pg.endswith(job)}


def _noticed_starts(job: str, earlier: tuple[set[str], set[str]]) -> list[str]:
    """Placement groups of this start that a notice holds up (``noticed``)."""
    draining = draining_nodes()
    return noticed(_placement_groups(job), draining, *earlier) if draining else []


def noticed(groups: dict[str, dict], draining: set[str], earlier: set[str], draining_before: set[str]) -> list[str]:
    """Of ``groups`` (placement group id -> Ray's table entry), those created since ``earlier`` and
    not removed that hold a bundle on a ``draining`` node, or that are not placed yet while a node
    came under notice since the start began (``draining_before``)."""
    new_notice = bool(draining - draining_before)
    held = []
    for pg, info in groups.items():
        state = info.get("state")
        if pg in earlier or state == "REMOVED":
            continue
        placed_on = set((info.get("bundles_to_node_id") or {}).values())
        if (state == "CREATED" and draining & placed_on) or (state != "CREATED" and new_notice):
            held.append(pg)
    return held


def _cut_start_short(placement_groups: list[str]) -> None:
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for pg in placement_groups:
        log.warning("a node of the starting worker group came under notice: its start ends now (placement "
                    "group %s) and the group re-forms on the nodes not under notice", pg)
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg))))
    _cut_short["starts"] += 1
