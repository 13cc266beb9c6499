"""Seeding and per-rank RNG states: what makes a resumed run equal an uninterrupted one."""

from __future__ import annotations

import random
from pathlib import Path


def seed_everything(seed: int) -> None:
    """Same seed on every rank, so every rank builds the same initial model."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank streams (dropout) after the model is built; distinct per rank, fixed per run."""
    seed_everything(seed * 1000 + 17 + rank)


def capture() -> dict:
    import numpy as np
    import torch

    # Plain values and tensors only, so the file loads with weights_only=True (checkpoint/safe_load.py).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save(path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(capture(), path)


def restore(path: Path) -> None:
    import numpy as np
    import torch

    from orchestrator.train.checkpoint import safe_load

    state = safe_load.load(path)
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    # A tensor since this format; a numpy array in files written before it (still loadable).
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
