"""A stand-in for `python -m orchestrator.train` that speaks the same contract (stdlib only).

Reads the manifest, resumes from the newest committed checkpoint under spec.checkpoint.uri
(a local directory), heartbeats every step over HTTP with its attempt token, checkpoints every
spec.checkpoint.every_steps, handles SIGTERM like a preemption (checkpoint, report, exit 75).
Behaviour for tests comes from metadata.labels (only on the attempt named by fake-attempt, default 1):
  fake-step-s: seconds per step       fake-exit-at: "STEP:CODE" exit with CODE after STEP
  ("STEP:CODE:REASON": first a final 'failed' heartbeat giving REASON, as the real driver does)
  fake-hang-at: STEP stop reporting   fake-no-heartbeat: "1" never report
  fake-ignore-term: "1" ignore SIGTERM (only SIGKILL stops it)
  fake-startup-s: seconds before the first step (node scale-up, image pull, engine build)
  fake-startup-phase: PHASE sent once as a 'starting' heartbeat when that startup begins (else silent)
"""

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

_stop = {"term": False}


def _on_term(_signum, _frame):
    _stop["term"] = True


def post(payload):
    url = f"{os.environ['BERTCTL_MANAGER_URL']}/v1/jobs/{os.environ['BERTCTL_JOB_ID']}/heartbeat"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={
        "Authorization": f"Bearer {os.environ['BERTCTL_ATTEMPT_TOKEN']}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        if exc.code == 409:
            print("fenced off by the manager (409); exiting", flush=True)
            sys.exit(69)
        return exc.code
    except OSError:
        return None  # manager unreachable: keep training


def newest_checkpoint(root):
    steps = [int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "manifest.json").exists()]
    return max(steps, default=0)


def save(root, step, attempt):
    d = root / f"step-{step}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.json").write_text(json.dumps({"step": step, "attempt": attempt}))
    (d / "manifest.json").write_text(json.dumps({"step": step}))  # written last: the commit
    return {"step": step, "uri": str(d), "world_size": 1, "save_seconds": 0.01}


def main():
    manifest = yaml.safe_load(Path(sys.argv[sys.argv.index("--manifest") + 1]).read_text())
    spec, labels = manifest["spec"], manifest["metadata"].get("labels", {})
    attempt = int(os.environ["BERTCTL_ATTEMPT"])
    special = attempt == int(labels.get("fake-attempt", "1"))
    if special and labels.get("fake-ignore-term") == "1":
        signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
    else:
        signal.signal(signal.SIGTERM, _on_term)
    root = Path(spec["checkpoint"]["uri"])
    every = spec["checkpoint"]["every_steps"]
    every = 5 if every == "auto" else int(every)
    max_steps = spec["training"]["max_steps"]
    step_s = float(labels.get("fake-step-s", "0.05"))
    start = newest_checkpoint(root)
    print(f"attempt {attempt} starting at step {start} mtbp={os.environ.get('BERTCTL_MTBP_S')}", flush=True)
    leaked = sorted(k for k in ("BERTCTL_ADMIN_TOKEN", "BERTCTL_TOKEN", "BERTCTL_DATABASE_URL") if k in os.environ)
    print(f"manager secrets in my environment: {leaked}", flush=True)
    ckpt, ckpt_s = None, 0.0
    base = {"attempt": attempt, "max_steps": max_steps, "world_size": 1}
    silent = special and labels.get("fake-no-heartbeat") == "1"
    first = True
    if special and labels.get("fake-startup-s"):
        if labels.get("fake-startup-phase"):
            post({"attempt": attempt, "status": "starting", "phase": labels["fake-startup-phase"]})
        print(f"starting up for {labels['fake-startup-s']}s", flush=True)
        time.sleep(float(labels["fake-startup-s"]))
    for step in range(start + 1, max_steps + 1):
        time.sleep(step_s)
        if special and labels.get("fake-hang-at") and step >= int(labels["fake-hang-at"]):
            print(f"hanging at step {step}", flush=True)
            while True:
                time.sleep(1)
        if step % every == 0 or step == max_steps:
            ckpt = save(root, step, attempt)
            ckpt_s += 0.01
        hb = {**base, "step": step, "loss": 10.0 / step, "mlm_accuracy": 0.1, "tokens_per_s": 1000.0,
              "checkpoint": ckpt, "checkpoint_seconds": ckpt_s}
        if first:
            hb["resumed_from_step"] = start
            first = False
        if not silent:
            post(hb)
        print(f"step {step} loss {10.0 / step:.3f}", flush=True)
        exit_at = labels.get("fake-exit-at")
        if special and exit_at and step == int(exit_at.split(":")[0]):
            _, code, *reason = exit_at.split(":")
            if reason:
                post({**base, "step": step, "status": "failed", "reason": reason[0], "message": "fake"})
            print(f"exiting with code {code}", flush=True)
            sys.exit(int(code))
        if _stop["term"]:
            ckpt = save(root, step, attempt)
            post({**base, "step": step, "status": "preempted", "checkpoint": ckpt})
            print(f"preempted at step {step}", flush=True)
            sys.exit(75)
    post({**base, "step": max_steps, "status": "succeeded", "checkpoint": ckpt})
    print("done", flush=True)


if __name__ == "__main__":
    main()
