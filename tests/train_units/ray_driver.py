"""A Ray Train v2 driver for test_ray_preemption.py: 2 TorchTrainer workers poll the watcher.

python ray_driver.py MODE OUT RAY_TMP   MODE: "watch" installs PreemptionWatcher(relay) after
ray.init, as the trainer entry point should; "plain" leaves Ray's own SIGTERM handling.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def train_fn(config):
    import ray.train

    from orchestrator.train.worker.preemption import PreemptionWatcher, StopRequest

    rank = ray.train.get_context().get_world_rank()
    watcher = PreemptionWatcher(25, config["notice"]).install()  # a thread here: it only polls
    for step in range(1, 6000):
        time.sleep(0.05)  # one optimizer step
        # Replaced atomically: the test reads it while this loop runs (open("w") shows it empty).
        with open(f"{config['out']}/alive{rank}.tmp", "w") as f:
            f.write(str(step))
        os.replace(f"{config['out']}/alive{rank}.tmp", f"{config['out']}/alive{rank}")
        decision = watcher.poll(save_cost_s=1.0)
        if decision is not StopRequest.CONTINUE:
            with open(f"{config['out']}/stopped{rank}", "w") as f:
                json.dump({"step": step, "decision": decision.value}, f)
            return


def main(mode: str, out: str, ray_tmp: str) -> int:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.contract import ExitCode
    from orchestrator.train.worker.preemption import PreemptionWatcher

    notice = os.path.join(out, "notice")
    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=ray_tmp,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    watcher = PreemptionWatcher(25, notice).install(relay=True) if mode == "watch" else None
    trainer = TorchTrainer(train_fn, train_loop_config={"notice": notice, "out": out},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(storage_path=os.path.join(out, "ray"), name="preempt"))
    trainer.fit()
    open(os.path.join(out, "fit_returned"), "w").close()
    preempted = watcher is not None and watcher.requested()
    ray.shutdown()
    return ExitCode.PREEMPTED if preempted else ExitCode.SUCCEEDED


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
