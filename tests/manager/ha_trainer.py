"""A stand-in trainer for the highly-available manager tests and bench/failover.py.

Like fake_trainer.py (steps, checkpoints under spec.checkpoint.uri, SIGTERM = preemption) but it
reports through the real heartbeat client (orchestrator/train/heartbeat.py), which fails over
between the manager replicas named by BERTCTL_MANAGER_URL and BERTCTL_MANAGER_URLS. Every
process start is appended to ``<checkpoint uri>/starts.log`` ("<attempt> <pid>"), so a test
can count launches from the trainers' side. labels: fake-step-s (seconds per step).
"""

import os
import signal
import sys
import time
from pathlib import Path

import yaml

from orchestrator.contract import CheckpointRef, Heartbeat
from orchestrator.train.heartbeat import HeartbeatClient, Identity

_stop = {"term": False}


def newest_checkpoint(root: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "manifest.json").exists()]
    return max(steps, default=0)


def save(root: Path, step: int) -> CheckpointRef:
    d = root / f"step-{step}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(f'{{"step": {step}}}')  # the commit
    return CheckpointRef(step=step, uri=str(d), world_size=1, save_seconds=0.01)


def main() -> None:
    manifest = yaml.safe_load(Path(sys.argv[sys.argv.index("--manifest") + 1]).read_text())
    spec, labels = manifest["spec"], manifest["metadata"].get("labels", {})
    signal.signal(signal.SIGTERM, lambda *_: _stop.update(term=True))
    identity = Identity.from_env(default_job_id="ha")
    root = Path(spec["checkpoint"]["uri"])
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "starts.log", "a") as f:
        f.write(f"{identity.attempt} {os.getpid()}\n")
    print(f"attempt {identity.attempt} reports to {identity.manager_url}", flush=True)
    client = HeartbeatClient(identity, timeout_s=1.0)
    every, max_steps = int(spec["checkpoint"]["every_steps"]), spec["training"]["max_steps"]
    step_s = float(labels.get("fake-step-s", "0.05"))
    start = newest_checkpoint(root)
    ckpt = None
    for step in range(start + 1, max_steps + 1):
        time.sleep(step_s)
        if client.fenced.is_set():
            sys.exit(69)
        if step % every == 0 or step == max_steps:
            ckpt = save(root, step)
        client.send(Heartbeat(attempt=identity.attempt, step=step, max_steps=max_steps, loss=10.0 / step,
                              world_size=1, checkpoint=ckpt, resumed_from_step=start if step == start + 1 else None))
        if _stop["term"]:
            client.send_final(Heartbeat(attempt=identity.attempt, status="preempted", step=step, checkpoint=save(root, step)))
            sys.exit(75)
    client.send_final(Heartbeat(attempt=identity.attempt, status="succeeded", step=max_steps, checkpoint=ckpt))
    print("done", flush=True)


if __name__ == "__main__":
    main()
