"""A trainer stand-in for the evaluation tests (stdlib only): it trains nothing, and reports as
committed the real checkpoints the test wrote beforehand under spec.checkpoint.uri (step-NNNNNNNN,
the trainer's layout), so the manager's evaluations fine-tune real weights without a pretraining run.

Steps 1..max_steps, one per fake-step-s (label, default 0.1 s); a checkpoint every
spec.checkpoint.every_steps and at the last step; then 'succeeded'.
"""

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import yaml


def post(payload):
    url = f"{os.environ['BERTCTL_MANAGER_URL']}/v1/jobs/{os.environ['BERTCTL_JOB_ID']}/heartbeat"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={
        "Authorization": f"Bearer {os.environ['BERTCTL_ATTEMPT_TOKEN']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def main():
    manifest = yaml.safe_load(Path(sys.argv[sys.argv.index("--manifest") + 1]).read_text())
    spec, labels = manifest["spec"], manifest["metadata"].get("labels", {})
    attempt = int(os.environ["BERTCTL_ATTEMPT"])
    root, every = spec["checkpoint"]["uri"].rstrip("/"), int(spec["checkpoint"]["every_steps"])
    max_steps = spec["training"]["max_steps"]
    base = {"attempt": attempt, "max_steps": max_steps, "world_size": 1}
    ckpt = None
    for step in range(1, max_steps + 1):
        time.sleep(float(labels.get("fake-step-s", "0.1")))
        if step % every == 0 or step == max_steps:
            ckpt = {"step": step, "uri": f"{root}/step-{step:08d}", "world_size": 1}
        post({**base, "step": step, "loss": 1.0, "checkpoint": ckpt, **({"resumed_from_step": 0} if step == 1 else {})})
    post({**base, "step": max_steps, "status": "succeeded", "checkpoint": ckpt})


if __name__ == "__main__":
    main()
