"""GPU check and throughput: the worker's real pieces on one CUDA device, without Ray.

Runs what a Ray Train worker runs on a GPU node — the data stream, the masked-positions BERT
head, the DeepSpeed engine from the manifest (ZeRO-2 (ZeRO-0 for LAMB), NCCL for CUDA collectives and gloo for
CPU ones), the per-step metric all-reduce, the preemption poll and a transactional
checkpoint save + restore — for fp32 AdamW, bf16 AdamW and fp16 LAMB (DeepSpeed's fused CUDA
optimizer, which has no bf16 kernel). Ray itself is left out so the script runs on a GPU machine that only has torch,
transformers, pyarrow, tokenizers and DeepSpeed.

    python bench/gpu.py [--preset bert-base] [--steps 40] [--micro 64] [--seq-len 128]

Prints a table; the last line is `ratios: bf16/fp32=<x> fp16_lamb/bf16_adamw=<x> resume_equal=<0|1>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from orchestrator.data.prepare import PrepareConfig, prepare  # noqa: E402
from orchestrator.data.stream import BatchStream  # noqa: E402
from orchestrator.model import build_model  # noqa: E402
from orchestrator.spec import parse_manifest  # noqa: E402
from orchestrator.train.worker import metrics as M  # noqa: E402
from orchestrator.train.checkpoint import Checkpointer, CheckpointStore, TrainState  # noqa: E402
from orchestrator.train.worker.engine import build_engine  # noqa: E402
from orchestrator.train.worker.heads import MaskedPositionsPretraining  # noqa: E402
from orchestrator.train.worker import PreemptionWatcher, StopRequest  # noqa: E402

WARMUP_STEPS = 5


def manifest(args, shards: str, ckpt: str, precision: str, optimizer: str) -> dict:
    return {
        "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": "gpu-check"},
        "spec": {
            "model": {"preset": args.preset},
            "tokenizer": {"vocab_size": args.vocab_size},
            "data": {"shards": shards, "seq_len": args.seq_len, "nsp": True, "seed": 7},
            "training": {"max_steps": args.steps, "global_batch_size": args.micro, "micro_batch_size": args.micro,
                         "optimizer": optimizer, "lr": 1e-4, "warmup_steps": 2, "precision": precision},
            "deepspeed": {"zero_stage": 0 if optimizer == "lamb" else args.zero_stage},
            "resources": {"workers": 1, "gpus_per_worker": 0 if args.cpu_smoke else 1},
            "checkpoint": {"uri": ckpt, "every_steps": args.steps},
        },
    }


def build(job, index, device):
    cfg = job.spec.model.bert_config(index.vocab_size)
    torch.manual_seed(job.spec.data.seed)
    model = MaskedPositionsPretraining(build_model(cfg, nsp=True), nsp=True).to(device)
    return build_engine(job, model, world_size=1, on_gpu=device.type == "cuda"), cfg


def run_config(args, shards: str, index, precision: str, optimizer: str, work: Path, n: int) -> dict:
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    job = parse_manifest(manifest(args, shards, str(work / f"ckpt-{n}-{precision}-{optimizer}"), precision, optimizer))
    engine, cfg = build(job, index, device)
    stream = BatchStream(shards, global_batch_size=args.micro, micro_batch_size=args.micro, rank=0, world_size=1,
                         seed=7)
    watcher = PreemptionWatcher(25.0, str(work / "notice"))
    losses, tokens, timed = [], 0, 0.0
    batches = iter(stream)
    for step in range(1, args.steps + 1):
        batch = next(batches)
        acc = M.StepAccumulator(started=time.perf_counter())
        for micro in batch.micro_batches:
            out = engine(**{k: torch.as_tensor(v).to(device) for k, v in micro.items()})
            engine.backward(out["loss"])
            engine.step()
            acc.add_outputs(out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        m = M.sync_step(acc, step, float(engine.get_lr()[0]))  # the CPU all-reduce (gloo) next to NCCL
        if watcher.poll(None) is not StopRequest.CONTINUE:
            raise RuntimeError("unexpected preemption decision")
        losses.append(m.loss)
        if step > WARMUP_STEPS:
            tokens, timed = tokens + m.tokens, timed + m.seconds
    resume_equal = checkpoint_roundtrip(job, engine, index, cfg, device, work, batch.cursor.to_dict(), args.steps)
    stream.close()
    del engine
    return {"precision": precision, "optimizer": optimizer, "first_loss": sum(losses[:3]) / 3,
            "last_loss": sum(losses[-3:]) / 3, "tokens_per_s": tokens / max(timed, 1e-9), "resume_equal": resume_equal}


def checkpoint_roundtrip(job, engine, index, cfg, device, work: Path, cursor: dict, step: int) -> bool:
    """Save transactionally, restore into a fresh engine, compare every parameter."""
    store = CheckpointStore(job.spec.checkpoint.uri, keep_last=1)
    saver = Checkpointer(store, 0, 1, 1, Path(tempfile.mkdtemp(dir=work)))
    state = TrainState(step=step, tokens_seen=0, cursor=cursor, world_size=1, attempt=1, zero_stage=job.spec.deepspeed.zero_stage,
                       global_batch_size=job.spec.training.global_batch_size, job_id="gpu-check",
                       model_config=cfg, nsp=True)
    saver.save(engine, state)
    fresh, _ = build(job, index, device)
    loader = Checkpointer(store, 0, 1, 2, Path(tempfile.mkdtemp(dir=work)))
    resume = loader.find()
    restored = loader.restore(fresh, resume)
    same = all(torch.equal(a, b) for a, b in zip(engine.module.parameters(), fresh.module.parameters()))
    return same and restored.step == step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bert-base")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--micro", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--zero-stage", type=int, default=2, help="ZeRO stage of the AdamW runs")
    parser.add_argument("--cpu-smoke", action="store_true", help="fp32 AdamW on the CPU only: checks the script")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        raise SystemExit("bench/gpu.py needs a CUDA device (or --cpu-smoke)")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    for name in ("LOCAL_RANK", "RANK"):
        os.environ.setdefault(name, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if args.cpu_smoke:
        dist.init_process_group("gloo", rank=0, world_size=1)
    else:
        torch.cuda.set_device(0)
        # The same split Ray Train gets on GPU workers: CUDA tensors over NCCL, CPU tensors over gloo.
        dist.init_process_group("cpu:gloo,cuda:nccl", rank=0, world_size=1)
    work = Path(tempfile.mkdtemp(prefix="bertctl-gpu-"))
    shards = str(work / "shards")
    t0 = time.perf_counter()
    index = prepare(PrepareConfig(inputs=["builtin:python-stdlib-docs"], output=shards, seq_len=args.seq_len,
                                  vocab_size=args.vocab_size, use_ray=False), progress=False)
    device = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0)
    print(f"prepared {sum(s.rows for s in index.shards)} rows in {time.perf_counter() - t0:.1f}s; device {device}")
    configs = [("fp32", "adamw")] * 3 if args.cpu_smoke else [("fp32", "adamw"), ("bf16", "adamw"), ("fp16", "lamb")]
    print(f"{'precision':<10}{'optimizer':<10}{'loss first3':>12}{'loss last3':>12}{'tokens/s':>14}{'resume':>8}")
    rows = []
    for n, (precision, optimizer) in enumerate(configs):
        r = run_config(args, shards, index, precision, optimizer, work, n)
        rows.append(r)
        print(f"{r['precision']:<10}{r['optimizer']:<10}{r['first_loss']:>12.3f}{r['last_loss']:>12.3f}"
              f"{r['tokens_per_s']:>14,.0f}{str(r['resume_equal']):>8}", flush=True)
    fp32, bf16, lamb = rows
    equal = int(all(r["resume_equal"] for r in rows))
    dist.destroy_process_group()
    print(f"ratios: bf16/fp32={bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f} "
          f"fp16_lamb/bf16_adamw={lamb['tokens_per_s'] / bf16['tokens_per_s']:.2f} resume_equal={equal}")


if __name__ == "__main__":
    main()
