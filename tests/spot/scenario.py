"""One short spot scenario through the chaos driver, printing what Ray reports as JSON lines.

    python tests/spot/scenario.py STATE_DIR NOTICE_S   (the cluster's client environment set)

1. wait for two live worker nodes; 2. take one with a PREEMPTION notice and read the drain Ray
reports; 3. after the deadline, read how the node ended; 4. kill another without notice; 5. give
the pool two slots back and wait for two live nodes again.
"""

import json
import sys
import time

from orchestrator.spot.chaos import Chaos
from orchestrator.spot.sim_cluster import SimCluster


def until(what, predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def view(chaos: Chaos, node_id: str) -> dict:
    return next(n.__dict__ for n in chaos.nodes() if n.node_id == node_id)


def gone(chaos: Chaos, node_id: str) -> dict | None:
    node = view(chaos, node_id)
    return None if node["alive"] else node


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    chaos = Chaos(SimCluster(sys.argv[1]), seed=1)
    notice_s = float(sys.argv[2])
    live = until("two live worker nodes", lambda: len(chaos.live()) >= 2 and chaos.live())
    emit(step="up", nodes=[n.node_id for n in live], types=[n.node_type for n in live])
    first = chaos.pick()
    deadline = chaos.preempt(first, notice_s)
    emit(step="notice", node=first.node_id, deadline_s=deadline, during=view(chaos, first.node_id))
    chaos.wait()
    emit(step="after_notice", node=until("the noticed node gone", lambda: gone(chaos, first.node_id)))
    second = chaos.pick()
    chaos.kill(second)
    emit(step="after_kill", node=until("the killed node gone", lambda: gone(chaos, second.node_id)))
    chaos.restore(first.node_type, 2)
    back = until("two live nodes again", lambda: len(chaos.live()) >= 2 and chaos.live(), timeout_s=90)
    emit(step="back", nodes=[n.node_id for n in back])


if __name__ == "__main__":
    main()
