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

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
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

    # Our own file from a verified checkpoint (sha256 checked): a full unpickle is safe here.
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
