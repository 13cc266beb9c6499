"""A fixed-size attempt that loses a node ends as ``node_lost``, not as a crash.

When a node is taken without notice (a spot reclaim, a host that fails), the surviving workers'
collectives fail at once ("Connection reset by peer"), seconds before Ray's health checks declare
the node dead. Untyped, that failure reads as an infrastructure error: the job's record would show
a crash where capacity went away, and the observed mean time between losses, which sizes
``checkpoint.every_steps: auto``, would never count it. So when an attempt on a cluster of several
nodes fails with an infrastructure error, the driver waits for a node that died since the attempt
started, and if one did, ends with ``NodeLost``: exit 69 as before (retried), reason ``node_lost``.
It waits up to ``elastic.NODE_DEATH_WAIT_S`` and within half the heartbeat timeout (no heartbeat
comes meanwhile), and stops waiting as soon as Ray gives its verdict, or as soon as every node's
raylet answers its health check (``node_probe.py``: nothing is being lost, the failure is a crash).

On a single-node cluster nothing is awaited: the only node is the driver's own, and a crash there
is no loss of capacity. An elastic attempt classifies its losses in its failure policy
(ray_policies.CapacityRecovery), which re-forms the group on each; when it stops re-forming (too
little capacity for too long: ``InsufficientCapacity``; too many re-forms: ``RecoveriesSpent``),
the attempt ends as ``node_lost`` too (``fit_elastic``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from orchestrator.train.driver.elastic import NODE_DEATH_WAIT_S, RecoveriesSpent, capacity_lost
from orchestrator.train.worker.errors import NodeLost

log = logging.getLogger("bertctl.train")


def fit_naming_node_loss(fit: Callable[[], Any], heartbeat_timeout_s: float) -> Any:
    """Run ``fit``; an infrastructure failure while a node of the cluster died becomes ``NodeLost``."""
    wait_s = min(NODE_DEATH_WAIT_S, heartbeat_timeout_s / 2)
    nodes = _nodes()
    known_dead = {n for n, node in nodes.items() if not node.get("Alive")}
    watched = len(nodes) - len(known_dead) > 1
    try:
        return fit()
    except Exception as exc:
        lost = _lost_nodes(exc, known_dead, wait_s) if watched else []
        if lost:
            raise NodeLost(f"node(s) {', '.join(lost)} of the cluster died under the attempt "
                           f"({type(exc).__name__}); the manager relaunches it from its newest "
                           "committed checkpoint when capacity allows") from exc
        raise


def fit_elastic(fit: Callable[[], Any], ended_on_capacity: Callable[[], str | None]) -> Any:
    """Run an elastic attempt's ``fit``; when its failure policy gave up re-forming on a capacity
    loss (``ended_on_capacity`` says why; the resize journal keeps it), the failure is that loss.
    Ray Train raises the last failure of the group as it was: untyped, it would read as a crash."""
    try:
        return fit()
    except Exception as exc:
        try:
            why = ended_on_capacity()
        except Exception as cannot_tell:  # noqa: BLE001 - never hide the attempt's own failure behind this one
            log.warning("cannot tell whether the attempt ended on lost capacity: %s", cannot_tell)
            why = None
        if why:
            raise RecoveriesSpent(why) from exc
        raise


def _lost_nodes(exc: Exception, known_dead: set[str], wait_s: float) -> list[str]:
    """The nodes that died since ``known_dead`` when ``exc`` is a loss of capacity, each by its
    address and id (`ray list nodes` shows both), else none. A cluster that cannot answer (its
    head is going too) leaves the failure as it was."""
    try:
        if not capacity_lost(exc, known_dead, wait_s):
            return []
        nodes = _nodes()
    except Exception as cannot_tell:  # noqa: BLE001 - never hide the attempt's own failure behind this one
        log.warning("cannot tell whether a node was lost: %s", cannot_tell)
        return []
    lost = [f"{node.get('NodeManagerAddress', '?')} (node id {n})" for n, node in sorted(nodes.items())
            if not node.get("Alive") and n not in known_dead]
    log.info("the attempt failed after node(s) %s died: node_lost", ", ".join(lost))
    return lost


def _nodes() -> dict[str, dict]:
    """Every node Ray knows of, alive or dead, by id."""
    import ray

    return {n["NodeID"]: n for n in ray.nodes()}
