"""Ray Train v2 ``TorchTrainer`` for a PretrainJob, and the local Ray cluster of one attempt.

The ``MetricsFile`` callback runs on the Ray Train controller and appends one JSON line per
report (rank 0's metrics plus every rank's sample ids) to a local file: ``bertctl run``'s
progress bar and the tests read it. The sample ids travel there through ``ray.train.report``,
never through a log: the trainer log stays at a few bytes per step (see ``quiet_worker_loop``).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable

from ray.train import UserCallback
from ray.train.torch import TorchTrainer

from orchestrator.contract import (
    ATTEMPT_ENV, ENV_ATTEMPT_TOKEN, ENV_ATTEMPT_TOKEN_FILE, ENV_RAY_ADDRESS, INHERITED_BERTCTL_ENV,
)
from orchestrator.data.ray_cluster import local_cpus, start_or_join_ray
from orchestrator.train.driver.metrics_relay import append_rows
from orchestrator.train.worker.regroup import process_group_backend
from orchestrator.spec import PretrainJob

# In-attempt retries of errors are off: the manager's supervisor classifies each failure and decides
# on a retry (with backoff and budget); a NaN loss or bad data must not be retried here. An elastic
# attempt re-forms its group on lost capacity only (driver/elastic.py). Ray Train would otherwise
# retry a worker killed with its drained node without limit (max_preemption_failures: -1), and a
# fixed attempt's restart pauses would pass for training time in the manager's goodput.
MAX_FAILURES = 0


class MetricsFile(UserCallback):
    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        append_rows(self.path, [(m or {}).get("rows", []) for m in metrics])


def scaling_config(job: PretrainJob):
    from ray.train import ScalingConfig

    r = job.spec.resources
    workers = r.workers if isinstance(r.workers, int) else (r.workers.min, r.workers.max)
    resources: dict[str, float] = {"CPU": float(r.cpus_per_worker)}
    if r.gpus_per_worker:
        resources["GPU"] = float(r.gpus_per_worker)
    return ScalingConfig(num_workers=workers, use_gpu=r.gpus_per_worker > 0, resources_per_worker=resources)


def waiting_for_workers(job: PretrainJob) -> str:
    """The startup phase while Ray Train gathers the workers (on a cloud cluster: node scale-up)."""
    w = job.spec.resources.workers
    count = str(w) if isinstance(w, int) else f"{w.min}-{w.max}"
    gpus = f" with {job.spec.resources.gpus_per_worker} GPU(s) each" if job.spec.resources.gpus_per_worker else ""
    return f"waiting for {count} worker(s){gpus}"


def ray_phase() -> str:
    """'joining Ray' when an address to join is given (the local warm head, KubeRay's RAY_ADDRESS)."""
    return "joining Ray" if os.environ.get(ENV_RAY_ADDRESS) or os.environ.get("RAY_ADDRESS") else "starting Ray"


def env_for_workers(work_dir: Path) -> dict[str, str]:
    """This attempt's contract variables for its workers on a shared head, which otherwise inherit
    the head's environment (manager/backends/local_ray.head_environ). Only the contract's names:
    Ray keeps a runtime_env in its GCS, so nothing else goes this way, and the attempt token goes
    by a 0600 file, never by value."""
    names = (ATTEMPT_ENV | INHERITED_BERTCTL_ENV) - {ENV_ATTEMPT_TOKEN}
    env = {k: v for k, v in os.environ.items() if k in names}
    token = os.environ.get(ENV_ATTEMPT_TOKEN)
    if token:
        path = work_dir / "attempt-token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        env[ENV_ATTEMPT_TOKEN_FILE] = str(path)
    return env


def start_ray(job: PretrainJob, work_dir: Path) -> bool:
    """Start or join Ray by the shared policy (data/ray_cluster.py); True when the caller shuts it down.

    A fresh local cluster gets every worker's CPUs plus 4 for the Ray Train controller and
    headroom, at least 8: too few logical CPUs deadlocks on a 2-core machine.
    """
    return start_or_join_ray(
        local_cpus(job.spec.resources.workers_cpus(), headroom=4, floor=8), log_to_driver=True,
        warm_address=os.environ.get(ENV_RAY_ADDRESS),  # the local backend's warm head (manager/backends/local_ray.py)
        configure_logging=False, runtime_env=lambda: {"env_vars": env_for_workers(work_dir)},
        env_defaults=controller_env(job))


def elastic(job: PretrainJob) -> bool:
    """resources.workers is {min, max}: the attempt re-forms its group on lost or regained capacity."""
    return not isinstance(job.spec.resources.workers, int)


def controller_env(job: PretrainJob) -> dict[str, str]:
    """Ray Train's own preemption watcher is off. A fixed attempt hears of SIGTERM through our
    notice relay (worker/preemption.py), and the watcher's actor would cost a process start inside
    every recovery. An elastic attempt's ranks each watch their own node (worker/regroup.py
    ``NodeDrainWatch``): on a notice Ray's watcher would hold the controller until the whole group
    ended, and the survivors re-form in place instead. Read by the controller."""
    if elastic(job):
        # The controller looks at its workers every half second (Ray's default: 2 s): a group that
        # ended to re-form waits that long before Ray Train notices.
        return {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    return {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def _cluster_has_no_dashboard() -> bool:
    """True when this driver is connected to a cluster that runs without Ray's dashboard."""
    import ray

    if not ray.is_initialized():
        return False
    try:
        from ray._private.worker import get_dashboard_url
    except ImportError:
        return False
    return not get_dashboard_url()


def _without_blind_placement_group_cleaner(callbacks: list) -> list:
    """Ray Train's PlacementGroupCleaner asks Ray's state API, which the dashboard serves, every
    second whether the controller lives, and warns each time it gets no answer. The clusters bertctl
    starts itself (a local cluster, the local backend's warm head) run without the dashboard: there
    it would warn every few seconds for the whole run and never clean anything (the driver's exit
    frees its placement groups anyway). Where the dashboard runs (KubeRay) it stays."""
    if not _cluster_has_no_dashboard():
        return callbacks
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return callbacks
    return [cb for cb in callbacks if not isinstance(cb, PlacementGroupCleanerCallback)]


def quiet_worker_loop(loop: Callable[[dict[str, Any]], None], config: dict[str, Any]) -> None:
    """``loop`` with Ray Train's echo of every ``ray.train.report`` turned off: it logs each payload at
    INFO from every rank (each buffered row and every rank's sample ids, hundreds of bytes per step).
    Only that logger is raised to WARNING; it lives in the worker process, so this runs there."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        getattr(train_context, "logger", logging.getLogger(train_context.__file__)).setLevel(logging.WARNING)
    except ImportError:  # another Ray layout: the echo stays, training does not change
        pass
    loop(config)


def _without_idle_dataset_manager(callbacks: list) -> list:
    """Ray Train starts a DatasetManager actor even when a run has no Ray Datasets (ours streams
    its own shards): one more process start on the path from a preemption to the first resumed step.
    Only that callback is dropped; if Ray moves it, nothing is dropped."""
    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:
        return callbacks
    return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]


class PretrainTrainer(TorchTrainer):
    """TorchTrainer without the idle DatasetManager when no Ray Dataset is given, and without a
    placement group cleaner that cannot see the cluster's state. An elastic attempt's controller
    gets bertctl's failure and scaling policies (driver/elastic.py) in place of Ray's."""

    resize_journal = None  # set by build_trainer for an elastic attempt
    metrics_relay = None
    capacity_wait_s = 0.0
    batch = (1, 1)  # (global, micro): set by build_trainer for an elastic attempt

    def _create_default_callbacks(self):
        callbacks = _without_blind_placement_group_cleaner(super()._create_default_callbacks())
        if self.resize_journal is not None:  # elastic: a start never waits for a node under notice
            from orchestrator.train.driver.start_guard import StartOnLiveNodes

            callbacks.append(StartOnLiveNodes())
        return callbacks if self.datasets else _without_idle_dataset_manager(callbacks)

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        if self.resize_journal is not None:
            from orchestrator.train.driver.ray_policies import CapacityRecovery, CheckpointBoundaryElastic

            scaling = CheckpointBoundaryElastic(self.scaling_config, self.resize_journal, self.batch,
                                                self.capacity_wait_s)
            controller_init_kwargs["scaling_policy"] = scaling
            controller_init_kwargs["failure_policy"] = CapacityRecovery(
                self.run_config.failure_config, self.resize_journal, keep_asking=scaling.keep_asking)
        return super()._initialize_and_run_controller(**controller_init_kwargs)


def build_trainer(job: PretrainJob, loop_config: dict[str, Any], storage_path: Path,
                  metrics_file: Path | None, name: str):
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig

    from orchestrator.train.worker import loop  # looked up now: tests replace loop.train_loop_per_worker

    callbacks = [MetricsFile(str(metrics_file))] if metrics_file else []
    storage_path.mkdir(parents=True, exist_ok=True)
    backend = process_group_backend(job.spec.resources.gpus_per_worker > 0)
    journal, relay, loop_config = _elastic_parts(job, loop_config, name, metrics_file)
    trainer = PretrainTrainer(
        functools.partial(quiet_worker_loop, loop.train_loop_per_worker),
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=backend),
        scaling_config=scaling_config(job),
        run_config=RunConfig(storage_path=str(storage_path), name=name, callbacks=callbacks,
                             failure_config=FailureConfig(max_failures=MAX_FAILURES,
                                                           max_preemption_failures=MAX_FAILURES)),
    )
    trainer.resize_journal, trainer.metrics_relay = journal, relay  # held while the attempt runs
    if journal is not None:
        from orchestrator.train.driver.elastic import capacity_wait_s

        trainer.capacity_wait_s = capacity_wait_s(job.spec.recovery.heartbeat_timeout_s)
        trainer.batch = (job.spec.training.global_batch_size, job.spec.training.micro_batch_size)
    return trainer


def _elastic_parts(job: PretrainJob, loop_config: dict[str, Any], name: str, metrics_file: Path | None):
    """An elastic attempt's resize journal and metrics relay, and the loop config that names them
    (the workers find them by name; the controller's policies get the journal's handle);
    (None, None, loop_config) for a fixed attempt."""
    if not elastic(job):
        return None, None, loop_config
    from orchestrator.train.driver.elastic import on_this_node, start_journal
    from orchestrator.train.driver.metrics_relay import MetricsRelay

    journal_name, relay_name = f"bertctl-resizes-{name}", f"bertctl-metrics-{name}"
    relay = on_this_node(MetricsRelay).options(name=relay_name, get_if_exists=True).remote(
        str(metrics_file) if metrics_file else None)
    return start_journal(journal_name), relay, {**loop_config, "resize_journal": journal_name,
                                                "metrics_relay": relay_name, "elastic": True}
