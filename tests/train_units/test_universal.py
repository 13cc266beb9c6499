"""Elastic resume with real DeepSpeed on CPU/gloo: save on 2 ranks, load on 1 and on 3.

The converted checkpoint must give back exactly the saved full fp32 weights and Adam moments
(gathered per parameter, so ZeRO padding and partition boundaries do not matter), the
client state and the optimizer step count, and training must go on with a finite loss.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from orchestrator.errors import CheckpointError
from orchestrator.train.checkpoint.universal import ResumePlan, prepare_resume, universal_ds_config
from tests.train_units.procs import HERE, run_ranks, start_ranks, wait_ranks

WORKER = HERE / "ds_worker.py"


def _load(path):
    return torch.load(path, weights_only=False)


def _assert_same_state(saved: dict, loaded: dict, where: str) -> None:
    assert saved.keys() == loaded.keys(), where
    for name, per_key in saved.items():
        for key, tensor in per_key.items():
            assert torch.equal(tensor, loaded[name][key]), f"{where}: {name}.{key} differs after the load"
    # Real moments, not zeros: otherwise equality would prove little.
    assert any(v["exp_avg"].abs().sum() > 0 for v in saved.values())


STAGES = [1, 2, 3]


def test_resume_saved_on_2_ranks_loads_on_1_and_3_for_zero_1_2_3(tmp_path):
    save_dir, tag = tmp_path / "ckpt", "step-3"
    run_ranks(WORKER, 2, {"phase": "train", "stages": STAGES, "steps": 3, "save_dir": str(save_dir),
                          "tag": tag, "dump": str(tmp_path / "saved")}, tmp_path, "train", timeout=240)
    resumes = {}
    for world in (1, 3):  # both resumes at once: 4 processes, each tiny
        args = {"phase": "resume", "stages": STAGES, "save_dir": str(save_dir), "tag": tag,
                "saved_world_size": 2, "work_dir": str(tmp_path / f"work{world}"),
                "dump": str(tmp_path / f"resumed{world}")}
        resumes[world] = start_ranks(WORKER, world, args, tmp_path, f"resume{world}")
    for world, procs in resumes.items():
        codes = wait_ranks(procs, timeout=240)
        assert codes == [0] * world, (codes, (tmp_path / f"resume{world}-rank0.log").read_text()[-3000:])
    for stage in STAGES:
        saved = _load(tmp_path / f"saved.zero{stage}.pt")
        assert saved["result"]["adam_steps"] == [3]
        for world in (1, 3):
            resumed = _load(tmp_path / f"resumed{world}.zero{stage}.pt")
            where = f"ZeRO-{stage}, 2 -> {world} ranks"
            assert resumed["result"]["load_universal"] is True, where
            assert resumed["result"]["world_size"] == world, where
            assert resumed["result"]["client_step"] == 3, where
            assert resumed["result"]["adam_steps"] == [3], where
            _assert_same_state(saved["state"], resumed["state"], where)
            assert all(math.isfinite(x) for x in resumed["result"]["losses"]), where


def test_same_world_size_loads_the_original(tmp_path):
    (tmp_path / "t").mkdir()
    calls = []
    plan = prepare_resume(str(tmp_path), "t", 2, 2, 2, str(tmp_path / "w"), barrier=lambda: calls.append(1))
    assert plan == ResumePlan(str(tmp_path), "t", load_universal=False)
    assert calls == [1]  # every rank still meets the barrier: the collective stays balanced
    assert not (tmp_path / "w").exists()


def test_stage0_needs_no_conversion(tmp_path):
    (tmp_path / "t").mkdir()
    assert prepare_resume(str(tmp_path), "t", 2, 3, 0, str(tmp_path / "w")).load_universal is False


def _fake_shards(tag_dir, ranks, stage12=True, garbage=b"not a torch file"):
    tag_dir.mkdir(parents=True)
    for r in range(ranks):
        (tag_dir / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(garbage)
        if not stage12:
            (tag_dir / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt").write_bytes(garbage)
    if stage12:
        (tag_dir / "mp_rank_00_model_states.pt").write_bytes(garbage)


@pytest.mark.parametrize("ranks,stage,needle", [
    (1, 2, "1 ZeRO optimizer shard(s) but the checkpoint says it was saved by 2"),
    (2, 3, "saved with ZeRO stage 1 or 2 but this run uses stage 3"),
])
def test_mismatched_shards_fail_before_conversion(tmp_path, ranks, stage, needle):
    _fake_shards(tmp_path / "t", ranks)
    with pytest.raises(CheckpointError) as err:
        prepare_resume(str(tmp_path), "t", 2, 3, stage, str(tmp_path / "w"))
    assert needle in str(err.value)
    assert not (tmp_path / "w").exists()


def test_stage3_files_with_stage2_run_fail(tmp_path):
    _fake_shards(tmp_path / "t", 2, stage12=False)
    with pytest.raises(CheckpointError, match="saved with ZeRO stage 3 but this run uses stage 2"):
        prepare_resume(str(tmp_path), "t", 2, 3, 2, str(tmp_path / "w"))


def test_failed_conversion_is_a_checkpoint_error_on_every_rank(tmp_path):
    _fake_shards(tmp_path / "t", 2)
    work = str(tmp_path / "w")
    with pytest.raises(CheckpointError, match="universal format failed"):
        prepare_resume(str(tmp_path), "t", 2, 3, 2, work, is_converter=True)
    # A rank that did not convert reads the converter's failure after the barrier.
    with pytest.raises(CheckpointError, match="universal format failed"):
        prepare_resume(str(tmp_path), "t", 2, 3, 2, work, is_converter=False, barrier=lambda: None)
    assert not [p for p in os.listdir(work) if p.startswith(".tmp-")]


def test_non_converter_without_shared_work_dir_fails_clearly(tmp_path):
    _fake_shards(tmp_path / "t", 2)
    with pytest.raises(CheckpointError, match="no converted universal checkpoint"):
        prepare_resume(str(tmp_path), "t", 2, 3, 2, str(tmp_path / "w"), is_converter=False)


@pytest.mark.parametrize("args,needle", [
    ((2, 3, 4), "not a ZeRO stage"),
    ((0, 3, 2), "at least 1"),
])
def test_bad_arguments(tmp_path, args, needle):
    (tmp_path / "t").mkdir()
    with pytest.raises(CheckpointError, match=needle):
        prepare_resume(str(tmp_path), "t", *args, str(tmp_path / "w"))


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        prepare_resume(str(tmp_path), "nope", 2, 3, 2, str(tmp_path / "w"))


def test_universal_ds_config_copies():
    base = {"zero_optimization": {"stage": 2}, "checkpoint": {"tag_validation": "Warn"}}
    out = universal_ds_config(base)
    assert out["checkpoint"] == {"tag_validation": "Warn", "load_universal": True}
    assert "load_universal" not in base["checkpoint"]


def test_an_earlier_conversion_is_reused_only_for_the_same_checkpoint(tmp_path):
    from orchestrator.train.checkpoint import universal as U

    _fake_shards(tmp_path / "t", 2)  # garbage: converting it would fail
    out = tmp_path / "w" / U.universal_tag("t")
    out.mkdir(parents=True)
    (out / U.DONE_MARKER).write_text(U.shard_fingerprint(str(tmp_path / "t")))
    plan = prepare_resume(str(tmp_path), "t", 2, 3, 2, str(tmp_path / "w"))
    assert plan == ResumePlan(str(tmp_path / "w"), "t_universal", load_universal=True)
    # Same tag, different shards (a newer step saved under the same DeepSpeed tag): reconvert.
    (tmp_path / "t" / "mp_rank_00_model_states.pt").write_bytes(b"newer and longer checkpoint")
    with pytest.raises(CheckpointError, match="universal format failed"):
        prepare_resume(str(tmp_path), "t", 2, 3, 2, str(tmp_path / "w"))


def test_converters_on_nodes_that_share_a_work_dir_may_race(tmp_path, monkeypatch):
    """Nodes whose scratch is one file system (the simulated spot cluster, a shared volume) each
    convert; the one that finishes second finds the first one's copy in place, not a failure."""
    from orchestrator.train.checkpoint import universal as U

    _fake_shards(tmp_path / "t", 2)
    work = tmp_path / "w"
    others: list = []

    def convert(input_folder: str, output_folder: str) -> None:
        os.makedirs(output_folder)
        with open(os.path.join(output_folder, "fp32.pt"), "w") as f:
            f.write("weights")
        if not others:  # the other node's converter starts and finishes while this one converts
            others.append(None)
            others[0] = prepare_resume(str(tmp_path), "t", 2, 3, 2, str(work), is_converter=True)

    monkeypatch.setattr(U, "_run_ds_to_universal", convert)
    plan = prepare_resume(str(tmp_path), "t", 2, 3, 2, str(work), is_converter=True)
    assert plan == others[0] == ResumePlan(str(work), "t_universal", load_universal=True)
    assert not (work / "t_universal" / U._FAILED).exists()
    assert not [p for p in os.listdir(work) if p.startswith(".tmp-")]
