"""One rank of a real DeepSpeed (CPU, gloo) run for test_snapshot.py.

Trains a tiny BERT under ZeRO-<stage>, saves through the snapshotting checkpoint engine and keeps
training while the files are written, then loads the checkpoint into a fresh engine (DeepSpeed's
own checkpoint engine). Rank 0 dumps the full state at the save and after the load.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ds_worker import build_model, ds_config, train_step  # noqa: E402

from orchestrator.train.checkpoint import snapshot  # noqa: E402
from orchestrator.train.worker.engine import skip_shared_memory_all_reduce  # noqa: E402
from tests.train_units.state_dump import full_state  # noqa: E402


def main() -> None:
    import deepspeed
    import torch.distributed as dist

    args = json.loads(sys.argv[1])
    rank, world, stage = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args["stage"]
    skip_shared_memory_all_reduce()  # as the trainer does on CPU (worker/engine.py)
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    model = build_model(seed=0)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=ds_config(stage, world), dist_init_required=False)
    for step in range(2):
        train_step(engine, step, rank)
    at_save = full_state(engine)
    writer = snapshot.install(engine)
    gate = threading.Event()
    writer._writer.submit(gate.wait)  # hold the writer thread: no file is written before the updates
    engine.save_checkpoint(args["save_dir"], tag="t", save_latest=False)
    for step in range(2, 5):  # in-place updates of the live state the snapshot was taken from
        train_step(engine, step, rank)
    after = full_state(engine)
    gate.set()
    writer.drain()
    fresh = build_model(seed=123)
    loader, _, _, _ = deepspeed.initialize(model=fresh, model_parameters=fresh.parameters(),
                                           config=ds_config(stage, world), dist_init_required=False)
    loader.load_checkpoint(args["save_dir"], tag="t")
    loaded = full_state(loader)
    if rank == 0:
        torch.save({"at_save": at_save, "after": after, "loaded": loaded}, args["dump"])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Every check is done and written by now. Skip the interpreter's teardown: DeepSpeed's CPU
    # shared-memory comm op has aborted there under load ("terminate called without an active
    # exception", exit -6, in a fresh-clone CI run) after the rank had finished its work.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
