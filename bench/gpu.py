"""MFU of bertctl's step on one device, against the best plain-PyTorch loop on the same data.

For each configuration (bert-base seq 128, bert-large seq 128, bert-base seq 512) it runs, in
one process and without Ray:

- **bertctl's path**, the pieces a Ray Train worker runs: the data stream, the masked-positions
  BERT head fed by the static-size index (``heads.device_inputs``), the next batch staged before
  each step's host sync (``inputs.StagedBatches``), the DeepSpeed engine from a manifest (NCCL for
  CUDA collectives, gloo for CPU ones), the step's one collective of metrics and preemption
  notice; after the first configuration, a transactional checkpoint save + restore
  into a fresh engine, compared parameter by parameter;
- **plain PyTorch** on the same batches (a second stream with the same seed), staged on the
  device before timing: transformers' ``BertForPreTraining`` with SDPA attention and its own
  loss, bf16 autocast (fp32 on the CPU), ``torch.optim.AdamW(fused=True)`` on a GPU, the same
  gradient clipping and lr schedule, no host sync until the end.

Both are charged the same model FLOPs per real token (``orchestrator/flops.py``: 6 x non-embedding
parameters + attention + the masked-positions head over the measured masked fraction), so the
MFU ratio is the throughput ratio; padding tokens count for nothing. MFU is against the device's
dense peak for the precision (``flops.PEAK_TFLOPS``, sources in docs/training.md), or
``--peak-tflops``; "n/a" when neither is known (a CPU). ``loss0`` / ``plain0``: each path's first
loss — the same initial weights on the same batch, so equal in fp32 (a check that both train the
same model on the same data); ``lossN`` / ``plainN``: the last.

Each configuration is measured twice in the same run: eager, then with the encoder compiled
(``spec.training.compile`` for bertctl's path, ``model.bert.compile(dynamic=False)`` for the plain
loop), printed as a second row ``<name>+compile``; ``step1 s`` is the first step's seconds (ours /
plain), which carries the compilation. ``--no-compile`` skips the compiled rows, and so does
``--zero-stage 3`` (the manifest refuses compile there). With dropout on, a compiled row's losses
differ from the eager row's (inductor draws its own dropout masks); ours and plain still agree.

    python bench/gpu.py [--steps 30] [--warmup 5] [--configs base-128,large-128,base-512]
    python bench/gpu.py --tiny     # CPU check of the whole script (automatic without CUDA)

After each of those rows, a ``+unpad`` row runs bertctl's path with ``spec.training.unpad`` (the
encoder on real tokens only, attention dropout off as the switch requires) against the same
plain-loop figures (its peer is unchanged, so it is not run again); ``--no-unpad`` skips them.

The last line: ``ratios: mfu_base=<x> mfu_large=<x> bertctl/plain_torch=<x> resume_equal=<0|1>
unpad/padded=<x>``, where ``bertctl/plain_torch`` is the lowest of the per-configuration throughput
ratios; the first four come from the eager padded rows only, so they mean what they meant before
the other rows; ``unpad/padded`` is the lowest per-configuration ratio of the eager unpad row's
throughput to the eager padded row's.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from orchestrator.data.prepare import PrepareConfig, prepare  # noqa: E402
from orchestrator.flops import flops_per_token, mfu, peak_flops  # noqa: E402
from orchestrator.model import build_model  # noqa: E402
from orchestrator.spec import parse_manifest  # noqa: E402
from orchestrator.train.checkpoint import Checkpointer, CheckpointStore, TrainState  # noqa: E402
from orchestrator.train.worker import PreemptionWatcher, StopRequest  # noqa: E402
from orchestrator.train.worker import metrics as M  # noqa: E402
from orchestrator.train.worker.engine import build_engine  # noqa: E402
from orchestrator.train.worker.inputs import StagedBatches  # noqa: E402
from orchestrator.train.worker.heads import (  # noqa: E402
    MaskedPositionsPretraining, attention_for, compile_encoder, device_inputs, mlm_capacity,
)
from bench.gpu_peer import LR, SEED, WARMUP_LR_STEPS, open_stream, run_plain, sync  # noqa: E402



@dataclass(frozen=True)
class Config:
    name: str
    preset: str
    seq_len: int
    micro: int


# GPU configurations; micro batches sized for one 80 GB device at ZeRO-0.
CONFIGS = {
    "base-128": Config("base-128", "bert-base", 128, 256),
    "large-128": Config("large-128", "bert-large", 128, 128),
    "base-512": Config("base-512", "bert-base", 512, 64),
}
# --tiny stand-ins with the same names (so the last line has the same keys): seconds on a CPU.
TINY = {
    "base-128": Config("base-128", "bert-tiny", 64, 8),
    "large-128": Config("large-128", "bert-mini", 64, 8),
    "base-512": Config("base-512", "bert-tiny", 128, 4),
}


def manifest(args, cfg: Config, shards: str, ckpt: str, compiled: bool = False, unpad: bool = False) -> dict:
    ds: dict = {"zero_stage": 0 if args.optimizer == "lamb" else args.zero_stage}
    # The variable-length kernel has no attention dropout, so the manifest asks for it off.
    overrides = {"attention_probs_dropout_prob": 0.0} if unpad else {}
    if args.adamw == "torch-fused":  # DeepSpeed builds torch.optim.AdamW(fused=True) from these params
        ds["config"] = {"optimizer": {"params": {"torch_adam": True, "fused": True}}}
    return {
        "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": "gpu-check"},
        "spec": {
            "model": {"preset": cfg.preset, "overrides": overrides},
            "data": {"shards": shards, "seq_len": cfg.seq_len, "nsp": True, "seed": SEED},
            "training": {"max_steps": args.warmup + args.steps, "global_batch_size": cfg.micro,
                         "micro_batch_size": cfg.micro, "optimizer": args.optimizer, "lr": LR,
                         "warmup_steps": WARMUP_LR_STEPS, "precision": args.precision, "compile": compiled,
                         "unpad": unpad},
            "deepspeed": ds,
            "resources": {"workers": 1, "gpus_per_worker": 1 if args.device.type == "cuda" else 0},
            "checkpoint": {"uri": ckpt, "every_steps": args.warmup + args.steps},
        },
    }


def build_bertctl(job, index, device):
    fields = job.spec.model.bert_config(index.vocab_size)
    torch.manual_seed(SEED)
    model = MaskedPositionsPretraining(build_model(fields, nsp=True, attention=attention_for(job.spec.training)),
                                       nsp=True).to(device)
    if job.spec.training.compile:  # as the worker does (loop._build_model)
        compile_encoder(model, packed=job.spec.training.unpad)
    return build_engine(job, model, world_size=1, on_gpu=device.type == "cuda"), fields


def bertctl_step(engine, inputs: list[dict], batches: StagedBatches, last: bool, watcher, step: int) -> M.StepMetrics:
    """One optimizer step as the worker runs it: inputs through the static-size head index, the
    next batch staged before the step's one host sync."""
    acc = M.StepAccumulator(started=time.perf_counter())
    for micro_inputs in inputs:
        out = engine(**micro_inputs)
        engine.backward(out["loss"])
        engine.step()
        acc.add_outputs(out)
    if not last:
        batches.stage_next()
    acc.set_notice(*watcher.local_view())
    acc.set_grad_norm(M.global_grad_norm(engine))
    m = M.sync_step(acc, step, float(engine.get_lr()[0]))  # the step's one host copy and one gather (gloo)
    if watcher.decide(m.noticed, m.time_left_s, m.attempt_wide, None) is not StopRequest.CONTINUE:
        raise RuntimeError("unexpected preemption decision")
    return m


def run_bertctl(args, cfg: Config, shards: str, index, work: Path, resume_check: bool, compiled: bool,
                unpad: bool) -> dict:
    ckpt = work / f"ckpt-{cfg.name}{'-compiled' if compiled else ''}{'-unpad' if unpad else ''}"
    job = parse_manifest(manifest(args, cfg, shards, str(ckpt), compiled, unpad))
    engine, fields = build_bertctl(job, index, args.device)
    stream = open_stream(shards, cfg)
    watcher = PreemptionWatcher(25.0, str(work / "notice"))
    capacity = mlm_capacity(cfg.micro * cfg.seq_len, job.spec.data.mlm_probability)
    to_device = functools.partial(device_inputs, device=args.device, capacity=capacity, unpad=unpad)
    batches, counts, losses, total = StagedBatches(iter(stream), to_device), Counts(), [], args.warmup + args.steps
    for step in range(1, total + 1):
        if step == args.warmup + 1:
            sync(args.device)
            counts.start()
        batch, inputs = batches.take()
        losses.append(bertctl_step(engine, inputs, batches, step == total, watcher, step).loss)
        counts.add(batch, timed=step > args.warmup)
        counts.first_step(step == 1)
    sync(args.device)
    counts.stop()
    equal = checkpoint_roundtrip(job, engine, index, fields, args.device, work, batch.cursor.to_dict(),
                                 len(losses)) if resume_check else None
    stream.close()
    del engine
    return {**counts.summary(), "fields": fields, "losses": losses, "resume_equal": equal}


class Counts:
    """Real (non-padding) tokens and masked positions of the timed steps, from the host arrays."""

    def __init__(self):
        self.tokens = self.masked = self.all_tokens = 0
        self.began = self.ended = self.step1_s = 0.0
        self.created = time.perf_counter()

    def first_step(self, first: bool) -> None:
        """The first step's seconds (its loss is read on the host, so the device is done with it)."""
        if first:
            self.step1_s = time.perf_counter() - self.created

    def start(self) -> None:
        self.began = time.perf_counter()

    def stop(self) -> None:
        self.ended = time.perf_counter()

    def add(self, batch, timed: bool) -> None:
        for micro in batch.micro_batches:
            real = int(np.asarray(micro["attention_mask"]).sum())
            self.all_tokens += real
            self.masked += int((np.asarray(micro["labels"]) != -100).sum())
            self.tokens += real if timed else 0

    def summary(self) -> dict:
        seconds = max(self.ended - self.began, 1e-9)
        return {"tokens_per_s": self.tokens / seconds, "masked_fraction": self.masked / max(self.all_tokens, 1),
                "step1_s": self.step1_s}


def checkpoint_roundtrip(job, engine, index, fields, device, work: Path, cursor: dict, step: int) -> bool:
    """Save transactionally, restore into a fresh engine, compare every parameter."""
    store = CheckpointStore(job.spec.checkpoint.uri, keep_last=1)
    saver = Checkpointer(store, 0, 1, 1, Path(tempfile.mkdtemp(dir=work)))
    state = TrainState(step=step, tokens_seen=0, cursor=cursor, world_size=1, attempt=1,
                       zero_stage=job.spec.deepspeed.zero_stage,
                       global_batch_size=job.spec.training.global_batch_size, job_id="gpu-check",
                       model_config=fields, nsp=True)
    saver.save(engine, state)
    fresh, _ = build_bertctl(job, index, device)
    loader = Checkpointer(store, 0, 1, 2, Path(tempfile.mkdtemp(dir=work)))
    restored = loader.restore(fresh, loader.find())
    same = all(torch.equal(a, b) for a, b in zip(engine.module.parameters(), fresh.module.parameters()))
    del fresh
    return same and restored.step == step


# ----- driver
def device_peak(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    return peak_flops(args.device_name, args.precision) if args.device.type == "cuda" else None


def measure(args, cfg: Config, shards: str, index, work: Path, first: bool, compiled: bool = False,
            unpad: bool = False, plain: dict | None = None) -> dict:
    """One row: bertctl's path and the plain loop, both eager or both with the encoder compiled.
    An ``unpad`` row is given the padded row's plain loop (its peer does not change)."""
    ours = run_bertctl(args, cfg, shards, index, work, resume_check=first, compiled=compiled, unpad=unpad)
    free(args.device)
    if plain is None:
        plain = run_plain(args, cfg, shards, ours["fields"], compiled)
        free(args.device)
    per_token = flops_per_token(ours["fields"], cfg.seq_len, ours["masked_fraction"], nsp=True).total
    peak = device_peak(args)
    return {"cfg": cfg, "flops": per_token, "ours": ours, "plain": plain, "compiled": compiled, "unpad": unpad,
            "mfu": mfu(ours["tokens_per_s"], per_token, peak),
            "plain_mfu": mfu(plain["tokens_per_s"], per_token, peak),
            "ratio": ours["tokens_per_s"] / plain["tokens_per_s"]}


def free(device) -> None:
    # Compiled graphs hold device memory and count against dynamo's recompile limit across runs.
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def print_row(r: dict) -> None:
    c, ours, plain = r["cfg"], r["ours"], r["plain"]
    name = c.name + ("+unpad" if r["unpad"] else "") + ("+compile" if r["compiled"] else "")
    print(f"{name:<24}{c.preset:<11}{c.seq_len:>5}{c.micro:>7}{r['flops'] / 1e9:>11.4g}"
          f"{ours['masked_fraction']:>8.3f}{ours['tokens_per_s']:>15,.0f}{pct(r['mfu']):>8}"
          f"{plain['tokens_per_s']:>13,.0f}{pct(r['plain_mfu']):>8}{r['ratio']:>7.2f}"
          f"{ours['losses'][0]:>8.3f}{plain['first_loss']:>8.3f}{ours['losses'][-1]:>8.3f}{plain['last_loss']:>8.3f}"
          f"{ours['step1_s']:>8.1f}/{plain['step1_s']:<.1f}", flush=True)


def last_line(rows: list[dict]) -> str:
    """Of the eager padded rows only, so its meaning is the same with or without the other rows;
    ``unpad/padded``: the lowest of the configurations' eager unpad-to-padded throughput ratios."""
    unpadded = {r["cfg"].name: r["ours"]["tokens_per_s"] for r in rows if r["unpad"] and not r["compiled"]}
    rows = [r for r in rows if not r["compiled"] and not r["unpad"]]
    by_name = {r["cfg"].name: r for r in rows}
    gains = [unpadded[r["cfg"].name] / r["ours"]["tokens_per_s"] for r in rows if r["cfg"].name in unpadded]

    def mfu_of(name: str) -> str:
        value = by_name[name]["mfu"] if name in by_name else None
        return "n/a" if value is None else f"{value:.3f}"

    equal = [r["ours"]["resume_equal"] for r in rows if r["ours"]["resume_equal"] is not None]
    return (f"ratios: mfu_base={mfu_of('base-128')} mfu_large={mfu_of('large-128')} "
            f"bertctl/plain_torch={min(r['ratio'] for r in rows):.2f} resume_equal={int(bool(equal) and all(equal))} "
            f"unpad/padded={f'{min(gains):.2f}' if gains else 'n/a'}")


def prepared(args, seq_len: int, work: Path, cache: dict):
    """Shards of the built-in corpus at ``seq_len`` (once per length)."""
    if seq_len not in cache:
        shards = str(work / f"shards-{seq_len}")
        t0 = time.perf_counter()
        index = prepare(PrepareConfig(inputs=["builtin:python-stdlib-docs"], output=shards, seq_len=seq_len,
                                      vocab_size=args.vocab_size, use_ray=False), progress=False)
        print(f"prepared seq {seq_len}: {sum(s.rows for s in index.shards)} rows, vocab {index.vocab_size}, "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        cache[seq_len] = (shards, index)
    return cache[seq_len]


def init_process_group(device) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    for name in ("LOCAL_RANK", "RANK"):
        os.environ.setdefault(name, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if device.type == "cuda":
        torch.cuda.set_device(0)
        # The same split Ray Train gets on GPU workers: CUDA tensors over NCCL, CPU tensors over gloo.
        dist.init_process_group("cpu:gloo,cuda:nccl", rank=0, world_size=1)
    else:
        dist.init_process_group("gloo", rank=0, world_size=1)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny models, few steps, on the CPU (auto without CUDA)")
    p.add_argument("--configs", default="base-128,large-128,base-512", help=f"of {', '.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (30 on a GPU, 6 tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (5 on a GPU, 2 tiny)")
    p.add_argument("--micro", type=int, default=None, help="micro batch for every configuration")
    p.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"], help="bf16 on a GPU, fp32 tiny")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"])
    p.add_argument("--adamw", default="deepspeed", choices=["deepspeed", "torch-fused"],
                   help="bertctl's AdamW on a GPU: DeepSpeed's FusedAdam (the default) or torch's fused AdamW")
    p.add_argument("--zero-stage", type=int, default=0, help="ZeRO stage of bertctl's AdamW runs")
    p.add_argument("--vocab-size", type=int, default=None, help="WordPiece vocabulary (30522 GPU, 4000 tiny)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense peak to use instead of the table")
    p.add_argument("--no-compile", action="store_true", help="skip the rows with the encoder through torch.compile")
    p.add_argument("--no-unpad", action="store_true", help="skip the rows with spec.training.unpad")
    return p.parse_args()


def resolve(args) -> list[Config]:
    args.tiny = args.tiny or not torch.cuda.is_available()
    args.device = torch.device("cpu") if args.tiny else torch.device("cuda", 0)
    args.device_name = "cpu" if args.tiny else torch.cuda.get_device_name(0)
    args.steps = args.steps or (6 if args.tiny else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 5)
    args.precision = args.precision or ("fp32" if args.tiny else "bf16")
    args.vocab_size = args.vocab_size or (4000 if args.tiny else 30522)
    args.compile = not args.no_compile and args.zero_stage < 3  # the manifest refuses compile under ZeRO-3
    table = TINY if args.tiny else CONFIGS
    unknown = [n for n in args.configs.split(",") if n not in table]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; choose from {', '.join(table)}")
    chosen = [table[n] for n in args.configs.split(",")]
    return [Config(c.name, c.preset, c.seq_len, args.micro) if args.micro else c for c in chosen]


def main() -> None:
    args = parse_args()
    configs = resolve(args)
    init_process_group(args.device)
    work, cache, rows = Path(tempfile.mkdtemp(prefix="bertctl-gpu-")), {}, []
    peak = device_peak(args)
    print(f"device {args.device_name}; precision {args.precision}; ZeRO {args.zero_stage}; AdamW {args.adamw}; "
          f"dense peak {'n/a' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'}; "
          f"compiled rows {'yes' if args.compile else 'no'}", flush=True)
    for n, cfg in enumerate(configs):
        shards, index = prepared(args, cfg.seq_len, work, cache)
        if n == 0:
            print(f"{'config':<24}{'preset':<11}{'seq':>5}{'micro':>7}{'GFLOP/tok':>11}{'masked':>8}"
                  f"{'bertctl tok/s':>15}{'MFU':>8}{'plain tok/s':>13}{'MFU':>8}{'ratio':>7}"
                  f"{'loss0':>8}{'plain0':>8}{'lossN':>8}{'plainN':>8}{'step1 s':>9}")
        for compiled in (False, True) if args.compile else (False,):
            rows.append(measure(args, cfg, shards, index, work, first=n == 0 and not compiled, compiled=compiled))
            print_row(rows[-1])
            if not args.no_unpad:
                rows.append(measure(args, cfg, shards, index, work, False, compiled, unpad=True,
                                    plain=rows[-1]["plain"]))
                print_row(rows[-1])
    dist.destroy_process_group()
    print(last_line(rows))


if __name__ == "__main__":
    main()
