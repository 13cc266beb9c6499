"""One rank of a real DeepSpeed (CPU, gloo) run, started as a subprocess by test_universal.py.

Usage: python ds_worker.py '<json>' with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in the
environment. Phases: "train" trains a tiny BERT a few steps and saves a checkpoint; "resume"
prepares an elastic resume with orchestrator.train.checkpoint.universal, loads, and trains one more step.
Both dump the full (gathered) fp32 parameters and Adam states from rank 0 for the test to compare.
"""

from __future__ import annotations

import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def build_model(seed: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    return BertForMaskedLM(cfg)


def ds_config(stage: int, world_size: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 2 * world_size,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def batch(step: int, rank: int):
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.randint(5, 64, (2, 16), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def train_step(engine, step: int, rank: int) -> float:
    out = engine(**batch(step, rank))
    engine.backward(out.loss)
    engine.step()
    return float(out.loss.detach())


def full_state(engine) -> dict:
    """Full fp32 weights and Adam moments per parameter (collective: every rank calls it)."""
    from tests.train_units.state_dump import full_state as gathered

    return gathered(engine)["params"]


def run_stage(args: dict, stage: int, rank: int, world: int) -> None:
    import deepspeed
    import torch.distributed as dist

    config = ds_config(stage, world)
    save_dir, dump = f"{args['save_dir']}/zero{stage}", f"{args['dump']}.zero{stage}.pt"
    plan = None
    if args["phase"] == "resume":
        from orchestrator.train.checkpoint.universal import prepare_resume, universal_ds_config

        plan = prepare_resume(save_dir, args["tag"], args["saved_world_size"], world, stage,
                              f"{args['work_dir']}/zero{stage}", is_converter=(rank == 0),
                              barrier=dist.barrier)
        if plan.load_universal:
            config = universal_ds_config(config)
    model = build_model(seed=0 if args["phase"] == "train" else 123)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=config, dist_init_required=False)
    result = {"world_size": world, "losses": []}
    if args["phase"] == "train":
        for step in range(args["steps"]):
            result["losses"].append(train_step(engine, step, rank))
        engine.save_checkpoint(save_dir, tag=args["tag"], client_state={"step": args["steps"]})
    else:
        _, client = engine.load_checkpoint(plan.load_dir, tag=plan.tag)
        result["client_step"] = client["step"]
        result["load_universal"] = plan.load_universal
    state = full_state(engine)
    result["adam_steps"] = sorted({int(s["step"]) for s in engine.optimizer.optimizer.state.values()
                                   if "step" in s})
    if args["phase"] == "resume":
        result["losses"].append(train_step(engine, 99, rank))
    if rank == 0:
        torch.save({"state": state, "result": result}, dump)
    dist.barrier()


def main() -> None:
    """One process per rank runs every stage in turn: process start-up (imports) is the cost."""
    args = json.loads(sys.argv[1])
    import deepspeed
    import torch.distributed as dist

    from orchestrator.train.worker.engine import skip_shared_memory_all_reduce

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    skip_shared_memory_all_reduce()  # as the trainer does on CPU
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    for stage in args["stages"]:
        run_stage(args, stage, rank, world)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Every check is done and written by now. Skip the interpreter's teardown: DeepSpeed's CPU
    # shared-memory comm op has aborted there under load ("terminate called without an active
    # exception", exit -6, in a fresh-clone CI run) after the rank had finished its work.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
