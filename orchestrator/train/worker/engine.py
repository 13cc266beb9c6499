"""The DeepSpeed engine of one worker, built from the manifest.

The DeepSpeed config is derived from ``spec.training`` / ``spec.deepspeed`` and
``spec.deepspeed.config`` is merged last (except the batch keys, which spec_rules forbids
there: they keep the global batch constant across world sizes). The learning-rate schedule
is a client ``LambdaLR`` whose value is a pure function of the step, so a resumed run gets
exactly the same learning rates, and DeepSpeed saves its state with the engine.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

from orchestrator.spec import PretrainJob
from orchestrator.spec_rules import grad_accum_steps as batch_rule


def grad_accum_steps(job: PretrainJob, world_size: int) -> int:
    """grad_accum for this world size (the batch rule lives in spec_rules)."""
    t = job.spec.training
    return batch_rule(t.global_batch_size, t.micro_batch_size, world_size)


def _optimizer_config(job: PretrainJob, on_gpu: bool) -> dict[str, Any]:
    t, ds = job.spec.training, job.spec.deepspeed
    params: dict[str, Any] = {"lr": t.lr, "betas": list(t.betas), "eps": t.eps, "weight_decay": t.weight_decay}
    if t.optimizer == "lamb":
        return {"type": "Lamb", "params": params}
    if not on_gpu and ds.offload_optimizer == "none":
        # FusedAdam needs CUDA; torch's AdamW is the reference implementation on CPU.
        params["torch_adam"] = True
    return {"type": "AdamW", "params": params}


def _precision_config(precision: str) -> dict[str, Any]:
    if precision == "bf16":
        return {"bf16": {"enabled": True}}
    if precision == "fp16":
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}}
    return {}


def _zero_config(job: PretrainJob) -> dict[str, Any]:
    ds = job.spec.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer}
    if ds.offload_param != "none":
        zero["offload_param"] = {"device": ds.offload_param}
    if ds.zero_stage == 3:
        # Export consolidates from the shards (zero_to_fp32), never from a gathered 16-bit copy.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return zero


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def deepspeed_config(job: PretrainJob, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The complete DeepSpeed config for ``world_size`` workers."""
    t = job.spec.training
    cfg: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps(job, world_size),
        "optimizer": _optimizer_config(job, on_gpu),
        "zero_optimization": _zero_config(job),
        "gradient_clipping": t.gradient_clipping,
        "steps_per_print": 10**9,  # our own metrics replace DeepSpeed's periodic prints
        "wall_clock_breakdown": False,
        **_precision_config(t.precision),
    }
    return deep_merge(cfg, job.spec.deepspeed.config)


def lr_multiplier(schedule: str, warmup: int, max_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr after ``step`` optimizer steps (LambdaLR convention)."""

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        span = max(1, max_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return fn


def _with_universal(cfg: dict[str, Any], load_universal: bool) -> dict[str, Any]:
    if not load_universal:
        return cfg
    from orchestrator.train.checkpoint.universal import universal_ds_config

    return universal_ds_config(cfg)


def _jit_friendly_arch_list() -> None:
    """DeepSpeed's JIT op builder parses TORCH_CUDA_ARCH_LIST as plain numbers; CUDA images often
    set arch-specific entries like '9.0a', which make every fused-op build (FusedAdam, FusedLamb)
    fail. The plain architecture builds kernels that run on the same GPU."""
    import os
    import re

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs and re.search(r"\d[af]\b", archs):
        os.environ["TORCH_CUDA_ARCH_LIST"] = re.sub(r"(\d)[af]\b", r"\1", archs)


def skip_shared_memory_all_reduce() -> None:
    """On CPU, DeepSpeed compiles its shared-memory all-reduce kernel when its communication backend
    starts: 35-120 s on a 2-core machine, at the first engine build of every install, under a file
    lock that the other workers wait on. Only ``inference_all_reduce`` (tensor-parallel inference)
    calls it; training's collectives go through torch.distributed. Marking the op incompatible (the
    dict DeepSpeed itself consults; its comment says edits to it persist) skips the build."""
    import deepspeed
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def build_engine(job: PretrainJob, model, world_size: int, on_gpu: bool, load_universal: bool = False):
    """deepspeed.initialize on the process group Ray Train already set up.

    ``load_universal``: the engine will load a universal checkpoint (a changed world size,
    checkpoint/universal.py); DeepSpeed fixes that at initialize time.
    """
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    t = job.spec.training
    if on_gpu:
        _jit_friendly_arch_list()
    else:
        skip_shared_memory_all_reduce()
    multiplier = lr_multiplier(t.schedule, t.warmup_steps, t.max_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=_with_universal(deepspeed_config(job, world_size, on_gpu), load_universal),
        lr_scheduler=lambda opt: LambdaLR(opt, multiplier),
        dist_init_required=False,
    )
    return engine


def scheduler_state(sched) -> dict:
    """The lr scheduler's plain fields, saved in a checkpoint's state.json."""
    if sched is None:
        return {}
    return {k: v for k, v in sched.state_dict().items() if isinstance(v, (int, float, str, list, type(None)))}
