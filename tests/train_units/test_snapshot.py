"""The snapshotting checkpoint engine (checkpoint.async_upload): the step waits for a host copy only,
and the files hold the state of the checkpointed step even though training went on meanwhile."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from orchestrator.errors import CheckpointError
from orchestrator.train.checkpoint.snapshot import SnapshotCheckpointEngine, host_copy
from tests.train_units.procs import HERE, run_ranks


def test_host_copy_is_independent_of_later_in_place_updates():
    live = {"state": {0: {"exp_avg": torch.ones(4)}}, "groups": [{"lr": 0.1, "params": [0]}], "n": 3}
    snap = host_copy(live)
    live["state"][0]["exp_avg"].mul_(7)
    live["groups"][0]["lr"] = 0.5
    assert torch.equal(snap["state"][0]["exp_avg"], torch.ones(4))
    assert snap["groups"][0]["lr"] == 0.1 and snap["n"] == 3


def test_host_copy_of_a_view_owns_only_the_view():
    flat = torch.arange(1000, dtype=torch.float32)  # like ZeRO's flat buffer behind each parameter
    snap = host_copy({"p": flat[10:20]})["p"]
    assert torch.equal(snap, torch.arange(10, 20, dtype=torch.float32))
    assert snap.untyped_storage().nbytes() == 10 * 4  # deepcopy would have copied all 1000


def test_host_copy_keeps_container_types():
    Pair = namedtuple("Pair", "a b")
    snap = host_copy({"t": (torch.zeros(1), 2), "nt": Pair(1, 2)})
    assert isinstance(snap["t"], tuple) and snap["nt"] == Pair(1, 2)


def test_save_returns_before_the_file_exists_and_drain_waits(tmp_path):
    eng = SnapshotCheckpointEngine()
    live = {"w": torch.randn(64, 64)}
    expected = live["w"].clone()
    eng.save(live, str(tmp_path / "f.pt"))
    live["w"].zero_()
    eng.drain()
    assert torch.equal(torch.load(tmp_path / "f.pt")["w"], expected)
    eng.close()


def test_a_failed_write_is_a_checkpoint_error_naming_the_file(tmp_path):
    eng = SnapshotCheckpointEngine()
    target = tmp_path / "missing-dir" / "f.pt"
    eng.save({"w": torch.zeros(2)}, str(target))
    with pytest.raises(CheckpointError, match="stays uncommitted.*missing-dir/f.pt"):
        eng.drain()
    eng.drain()  # the failure is reported once
    eng.close()


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_files_hold_the_saved_step_while_training_goes_on(stage, tmp_path):
    dump = tmp_path / "dump.pt"
    run_ranks(HERE / "snapshot_worker.py", 2, {"stage": stage, "save_dir": str(tmp_path / "ckpt"),
                                               "dump": str(dump)}, tmp_path, f"snap{stage}", timeout=240)
    got = torch.load(dump, weights_only=False)
    saved, loaded, after = got["at_save"], got["loaded"], got["after"]
    assert saved["adam_steps"] == loaded["adam_steps"] == [2] and after["adam_steps"] == [5]
    moved = 0
    for name, per_key in saved["params"].items():
        for key, value in per_key.items():
            assert torch.equal(value, loaded["params"][name][key]), f"ZeRO-{stage}: {name}.{key}"
            moved += not torch.equal(value, after["params"][name][key])
    assert moved, "training after the save must have changed the live state, or the test proves nothing"
