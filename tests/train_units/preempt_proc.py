"""Real processes for test_preemption.py: a driver that receives SIGTERM, ranks that see the notice.

driver: python preempt_proc.py driver '<json>'  - installs the watcher with the relay (as the
        Ray driver would after ray.init), starts the ranks in their own sessions (Ray's worker
        actors are not in the driver's process group either), waits for them, and exits 75 when
        every rank did.
rank:   python preempt_proc.py rank '<json>'    - a gloo rank running a fake training loop that
        agrees on the notice in the trainer's per-step collective and writes what it decided.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from orchestrator.contract import ExitCode  # noqa: E402
from orchestrator.train.worker import metrics as M  # noqa: E402
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


def _step_metrics(rank: int, step: int, watcher: PreemptionWatcher) -> M.StepMetrics:
    """The trainer's per-step collective (worker/metrics.py): this rank's sums (loss rank + 1, 10 x
    (rank + 1) tokens, as tensors like the model's outputs), its view of the notice, the global
    gradient norm; one gather agrees on all of it."""
    acc = M.StepAccumulator()
    acc.add_outputs({"loss": torch.tensor(rank + 1.0), "mlm_loss": torch.tensor(rank + 1.0),
                     "mlm_ok": torch.tensor(1), "mlm_n": torch.tensor(4), "tokens": torch.tensor(10 * (rank + 1))})
    acc.set_notice(*watcher.local_view())
    acc.set_grad_norm(torch.tensor(3.0))
    return M.sync_step(acc, step, lr=1e-3)


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
        m = _step_metrics(rank, step, watcher)
        decision = watcher.decide(m.noticed, m.time_left_s, m.attempt_wide, save_cost_s=args["save_cost_s"])
        if decision is not StopRequest.CONTINUE:
            with open(f"{args['out']}.rank{rank}", "w") as f:
                json.dump({"step": step, "decision": decision.value, "time_left": watcher.time_left(),
                           "agreed_left": m.time_left_s, "loss": m.loss, "tokens": m.tokens,
                           "grad_norm": m.grad_norm, "local_notice": watcher.notice_file == args["notice_file"]}, f)
            dist.destroy_process_group()
            return ExitCode.PREEMPTED
    return 1


if __name__ == "__main__":
    role, payload = sys.argv[1], json.loads(sys.argv[2])
    sys.exit(driver(payload) if role == "driver" else rank_main(payload))
