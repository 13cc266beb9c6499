"""A driver on the warm head that stands in for an attempt's (tests/manager/test_local_ray.py).

It hands the attempt's variables to its workers through the job's runtime environment, as the
trainer does, and starts two actors: one named like Ray Train's workers, and a detached one that
Ray restarts when it dies (as Ray Train's cluster-wide autoscaling coordinator is). Prints their
pids as one JSON line, then waits for its stdin to close.
"""

import json
import os
import sys

import ray


@ray.remote(num_cpus=0)
class RayTrainWorker:
    def pid(self) -> int:
        return os.getpid()


@ray.remote(num_cpus=0, max_restarts=-1)
class Coordinator:
    def pid(self) -> int:
        return os.getpid()


if __name__ == "__main__":
    env = {k: v for k, v in os.environ.items() if k.startswith("BERTCTL_")}
    ray.init(address=os.environ["BERTCTL_RAY_ADDRESS"], runtime_env={"env_vars": env}, log_to_driver=False)
    worker = RayTrainWorker.remote()
    coordinator = Coordinator.options(name="probe-coordinator", lifetime="detached").remote()
    print(json.dumps({"worker": ray.get(worker.pid.remote()), "coordinator": ray.get(coordinator.pid.remote())}),
          flush=True)
    sys.stdin.read()
