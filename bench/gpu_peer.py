"""bench/gpu.py's peer: the best plain-PyTorch loop on the same batches, and what both paths share
(the seed, the learning rate and its warmup, the sample stream)."""

from __future__ import annotations

import time

import numpy as np
import torch

from orchestrator.data.stream import BatchStream
from orchestrator.train.worker.engine import lr_multiplier

SEED = 7
LR, WARMUP_LR_STEPS = 1e-4, 2


def open_stream(shards: str, cfg) -> BatchStream:
    return BatchStream(shards, global_batch_size=cfg.micro, micro_batch_size=cfg.micro, rank=0, world_size=1,
                       seed=SEED)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def staged_batches(shards: str, cfg, device, count: int) -> list[dict]:
    """The same batches bertctl's path trained on, on the device before the clock starts."""
    stream = open_stream(shards, cfg)
    batches = iter(stream)
    staged = []
    for _ in range(count):
        for micro in next(batches).micro_batches:
            staged.append({k: torch.as_tensor(np.asarray(v), dtype=torch.long).to(device) for k, v in micro.items()})
    stream.close()
    return staged


def plain_model(fields: dict, device, compiled: bool):
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(SEED)
    model = BertForPreTraining(BertConfig(**fields, attn_implementation="sdpa")).to(device).train()
    if compiled:  # the same part bertctl compiles: the encoder, with static shapes
        model.bert.compile(dynamic=False)
    return model


def plain_optimizer(model, steps: int, fused: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                                  fused=fused)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier("linear", WARMUP_LR_STEPS, steps))


def run_plain(args, cfg, shards: str, fields: dict, compiled: bool) -> dict:
    device, cuda = args.device, args.device.type == "cuda"
    staged = staged_batches(shards, cfg, device, args.warmup + args.steps)
    model = plain_model(fields, device, compiled)
    created = time.perf_counter()
    optimizer, scheduler = plain_optimizer(model, args.warmup + args.steps, fused=cuda)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and args.precision == "bf16")
    losses = torch.zeros(len(staged), device=device)
    for step, inputs in enumerate(staged):
        if step == args.warmup:
            sync(device)
            began = time.perf_counter()
        with amp:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses[step] = loss.detach()
        if step == 0:
            sync(device)
            step1_s = time.perf_counter() - created
    sync(device)
    seconds = time.perf_counter() - began
    tokens = sum(int(b["attention_mask"].sum()) for b in staged[args.warmup:])
    del model, optimizer, staged
    return {"tokens_per_s": tokens / seconds, "first_loss": float(losses[0]), "last_loss": float(losses[-1]),
            "step1_s": step1_s}
