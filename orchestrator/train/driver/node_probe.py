"""Is every node of the cluster up right now? Asked of each raylet itself, not of Ray's verdict.

A worker group's collectives fail the moment a peer process dies. When its node was lost, Ray's
health checks declare it dead seconds later (3 x 1 s on the simulated cluster, about 30 s with Ray's
defaults); when the process crashed on a live node, no verdict ever comes. Waiting for the verdict
alone made every crash on a cluster of several nodes wait ``NODE_DEATH_WAIT_S`` (45 s) before it ended.
The raylets answer the same gRPC health check that Ray's GCS sends them: when every node Ray lists
as alive answers it, twice, no node is being lost, and the failure is a crash. A node being lost
does not answer (its raylet went with it), and a draining node (under a preemption notice, being
scaled down) counts as not answering, so those cases still wait for Ray's verdict.
"""

from __future__ import annotations

import logging

log = logging.getLogger("bertctl.train")

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}, serialised
PROBE_TIMEOUT_S = 1.0


def raylet_serving(address: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """The raylet at ``address:port`` answers its health check with SERVING within ``timeout_s``."""
    import grpc

    with grpc.insecure_channel(f"{address}:{port}") as channel:
        check = channel.unary_unary(HEALTH_CHECK)  # raw bytes both ways: the message is two bytes
        try:
            return check(b"", timeout=timeout_s) == SERVING
        except grpc.RpcError:
            return False


def every_node_answers(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Every node Ray lists as alive is up and not draining: its raylet answers. False when any does
    not, or when the cluster cannot be asked (then the caller keeps waiting for Ray's verdict)."""
    import ray

    from orchestrator.train.driver.elastic import draining_nodes

    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if not alive or draining_nodes() & {n["NodeID"] for n in alive}:
            return False
        return all(raylet_serving(n["NodeManagerAddress"], n["NodeManagerPort"], timeout_s) for n in alive)
    except Exception as cannot_ask:  # noqa: BLE001 - an unanswered probe only means: wait for the verdict
        log.debug("cannot probe the cluster's nodes: %s", cannot_ask)
        return False
