"""Test and debugging aid: the full training state of a rank group, written next to a save or load.

``BERTCTL_DUMP_STATE=<prefix>`` makes rank 0 write ``<prefix>-saved-stepN.pt`` right before the
checkpoint of step N is staged and ``<prefix>-loaded-stepN.pt`` right after it was restored.
Each holds, per parameter, the full fp32 weight and Adam moments gathered across the ZeRO
partitions (so padding and partition boundaries do not matter), plus Adam's step counts: an
elastic resume can then be checked for exactly the state that was saved on another world size.
Gathering is collective, so every rank calls ``dump``; it does nothing when the variable is unset.
"""

from __future__ import annotations

ENV_DUMP_STATE = "BERTCTL_DUMP_STATE"


def full_state(engine) -> dict:
    """Collective: {"params": {name: {fp32, exp_avg, exp_avg_sq}}, "adam_steps": [...]}."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO-1/2 link the moments to parameters at the first step, not at a load
        link()
    params = {}
    for name, p in engine.module.named_parameters():
        params[name] = {
            "fp32": safe_get_full_fp32_param(p).detach().cpu().clone(),
            "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").detach().cpu().clone(),
            "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").detach().cpu().clone(),
        }
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    steps = sorted({int(s["step"]) for s in inner.state.values() if "step" in s})
    return {"params": params, "adam_steps": steps}


def dump(prefix: str | None, when: str, step: int, engine, rank: int, world_size: int) -> None:
    if not prefix:
        return
    import torch

    state = full_state(engine) | {"world_size": world_size, "step": step}
    if rank == 0:
        torch.save(state, f"{prefix}-{when}-step{step:08d}.pt")
