"""Real processes for test_preemption.py: a driver that receives SIGTERM, ranks that see the notice.

driver: python preempt_proc.py driver '<json>'  - installs the watcher with the relay (as the
        Ray driver would after ray.init), starts the ranks in their own sessions (Ray's worker
        actors are not in the driver's process group either), waits for them, and exits 75 when
        every rank did.
rank:   python preempt_proc.py rank '<json>'    - a gloo rank running a fake training loop that
        polls the watcher once per step and writes what it decided.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from orchestrator.contract import ExitCode  # noqa: E402
from orchestrator.train.worker.preemption import PreemptionWatcher, StopRequest  # noqa: E402


def driver(args: dict) -> int:
    watcher = PreemptionWatcher(args["deadline_s"], args["notice_file"]).install(relay=True)
    children = []
    for rank in range(args["world_size"]):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args["world_size"]),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args["port"]), PYTHONPATH=ROOT)
        children.append(subprocess.Popen([sys.executable, __file__, "rank", json.dumps(args)],
                                         env=env, start_new_session=True))
    with open(args["ready_file"], "w") as f:
        f.write(" ".join(str(c.pid) for c in children))
    codes = [c.wait(timeout=120) for c in children]
    watcher.uninstall()
    return ExitCode.PREEMPTED if codes == [ExitCode.PREEMPTED] * len(codes) else 1


def rank_main(args: dict) -> int:
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    notice = args["notice_file"] if rank in args.get("notice_ranks", [rank]) else args["notice_file"] + ".never"
    watcher = PreemptionWatcher(args["deadline_s"], notice)
    started = time.time()
    step = 0
    while time.time() - started < 60:
        time.sleep(0.02)  # one optimizer step
        step += 1
        if step == 5:
            open(f"{args['out']}.started{rank}", "w").close()
        decision = watcher.poll(save_cost_s=args["save_cost_s"])
        if decision is not StopRequest.CONTINUE:
            with open(f"{args['out']}.rank{rank}", "w") as f:
                json.dump({"step": step, "decision": decision.value, "time_left": watcher.time_left(),
                           "local_notice": watcher.notice_file == args["notice_file"]}, f)
            dist.destroy_process_group()
            return ExitCode.PREEMPTED
    return 1


if __name__ == "__main__":
    role, payload = sys.argv[1], json.loads(sys.argv[2])
    sys.exit(driver(payload) if role == "driver" else rank_main(payload))
