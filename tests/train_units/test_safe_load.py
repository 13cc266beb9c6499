"""Checkpoint files load as data only (torch.load(weights_only=True)): a pickle that would run code
is refused with a CheckpointError before anything unpickles it in full; real DeepSpeed files and RNG
files of both formats load."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from orchestrator.errors import CheckpointError
from orchestrator.train.checkpoint import rng, safe_load
from tests.train_units.procs import HERE, run_ranks



def _pwn(path: str) -> str:
    with open(path, "w") as f:
        f.write("code ran while loading a checkpoint")
    return "pwned"


class RunsCodeWhenUnpickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (_pwn, (self.marker,))


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    step = tmp_path / "step-00000010" / "ds"
    step.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}, "extra": RunsCodeWhenUnpickled(str(marker))},
               step / "mp_rank_00_model_states.pt")
    # The file really runs code under a full unpickle: the test would prove nothing otherwise.
    probe = tmp_path / "probe.pt"
    torch.save(RunsCodeWhenUnpickled(str(tmp_path / "probe-marker")), probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-marker").exists()
    return tmp_path / "step-00000010", marker


def test_a_pickle_that_runs_code_is_refused(evil_checkpoint):
    root, marker = evil_checkpoint
    with pytest.raises(CheckpointError, match="not a plain checkpoint file"):
        safe_load.load(root / "ds" / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt"):
        safe_load.check_tree(root)
    assert not marker.exists()


def test_a_rng_file_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "rank-00000.pt"
    torch.save({"python": random.getstate(), "numpy": RunsCodeWhenUnpickled(str(marker))}, path)
    with pytest.raises(CheckpointError):
        rng.restore(path)
    assert not marker.exists()


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_round_trip_and_files_of_the_older_format(tmp_path):
    rng.seed_everything(7)
    path = tmp_path / "rng.pt"
    rng.save(path)
    expected = _draws()
    rng.seed_everything(99)
    rng.restore(path)
    assert _draws() == expected
    # Before this format the numpy state was pickled as an ndarray: still loadable, as data.
    rng.seed_everything(7)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, tmp_path / "old.pt")
    rng.seed_everything(99)
    rng.restore(tmp_path / "old.pt")
    assert _draws() == expected


def test_real_deepspeed_checkpoint_files_load_as_data(tmp_path):
    save_dir = tmp_path / "ckpt"
    run_ranks(HERE / "ds_worker.py", 1, {"phase": "train", "stages": [1, 3], "steps": 1, "save_dir": str(save_dir),
                                         "tag": "ds", "dump": str(tmp_path / "saved")}, tmp_path, "train", timeout=240)
    files = sorted(save_dir.rglob("*.pt"))
    assert any("optim_states" in f.name for f in files), files  # LossScaler, ZeroStageEnum inside
    safe_load.check_tree(save_dir)
    assert "module" in safe_load.load(next(f for f in files if f.name.endswith("model_states.pt")))
