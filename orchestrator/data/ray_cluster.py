"""Start or join Ray: the one policy the trainer (train/driver/launch.py) and ``prepare`` share.

In this order:

1. Ray is already initialized in this process (the tests share one cluster per session): use it
   as it is; this call owns nothing.
2. ``RAY_ADDRESS`` is set (inside a KubeRay cluster): join that cluster with Ray's defaults.
3. A warm head is named (the trainer passes the local backend's ``BERTCTL_RAY_ADDRESS``): join it.
4. Otherwise start a fresh local cluster owned by this process, with ``address="local"``, which
   never attaches to (and then fails on) someone else's ``ray start`` cluster on this machine.

The caller shuts Ray down when ``start_or_join_ray`` returns True.
"""

from __future__ import annotations

import os
from typing import Any, Callable


def local_cpus(demand: float, headroom: int = 0, floor: int = 2) -> int:
    """Logical CPUs for a fresh local cluster: ``demand`` (the CPU slots the caller's tasks or actors
    hold at once) plus ``headroom`` (other slot holders, e.g. the Ray Train controller), never under
    ``floor``.

    Logical CPUs are a scheduling budget, not cores: with fewer slots than the work holds at once,
    tasks wait for each other forever (a deadlock on a 2-core machine), so the budget follows the
    demand, not ``os.cpu_count()``.
    """
    return max(floor, int(demand) + headroom)


def start_or_join_ray(num_cpus: int, *, log_to_driver: bool, warm_address: str | None = None,
                      configure_logging: bool = True, runtime_env: Callable[[], dict[str, Any]] | None = None,
                      env_defaults: dict[str, str] | None = None) -> bool:
    """Connect by the policy above; True when this call connected (the caller then shuts Ray down).

    ``num_cpus`` (see ``local_cpus``) applies only to a fresh local cluster. ``runtime_env`` builds the
    runtime environment for a warm head's workers (which otherwise inherit the head's environment);
    it may write files, so it is called only when joining the warm head. ``env_defaults`` are set in
    this process (unless already set) before joining a warm head or starting a local cluster, never
    under ``RAY_ADDRESS``, where the cluster's own configuration rules.
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=log_to_driver)
        return True
    for key, value in (env_defaults or {}).items():
        os.environ.setdefault(key, value)
    if warm_address:
        ray.init(address=warm_address, log_to_driver=log_to_driver, configure_logging=configure_logging,
                 runtime_env=runtime_env() if runtime_env else None)
        return True
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
             configure_logging=configure_logging)
    return True
