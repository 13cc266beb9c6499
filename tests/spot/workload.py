"""Demand for the simulated spot cluster: one actor per spot node that Ray restarts wherever there is
room (as a worker group would be re-formed), until this driver is stopped.

    python tests/spot/workload.py ACTORS   (the cluster's client environment set)
"""

import sys
import time

import ray


@ray.remote(num_cpus=1, resources={"spot_node": 1}, max_restarts=-1)
class Holder:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def main() -> None:
    ray.init(log_to_driver=False)
    holders = [Holder.remote() for _ in range(int(sys.argv[1]))]
    print("placed", sorted(ray.get([h.node.remote() for h in holders])), flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
