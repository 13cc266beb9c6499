"""End to end on 2 Ray workers with DeepSpeed on CPU (gloo, fp32), on real text.

One uninterrupted 40-step ZeRO-2 run serves three checks: it learns, it is the reference for
the exact-resume check (20 steps, stop, re-run to 40), and its checkpoint is exported and loaded
in transformers. The schedule is constant after warmup, so stopping a run at step 20 (by giving
it max_steps 20) changes nothing but the stop; dropout is on, so equality needs the RNG states.
"""

from __future__ import annotations

import json

import pytest

from orchestrator.contract import ExitCode
from orchestrator.train.checkpoint import CheckpointStore
from orchestrator.train.worker import loop
from tests.train.poisoned_worker import train_loop_with_poisoned_weights
from tests.train.conftest import manifest, train

pytestmark = pytest.mark.e2e

LEARN_MARGIN = 0.5  # nats: mean MLM loss of steps 36-40 must be this far below steps 1-5


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards, ray_cluster):
    """40 uninterrupted steps, checkpoints at 20 and 40."""
    tmp = tmp_path_factory.mktemp("ref")
    m = manifest(tmp / "job.yaml", shards, tmp / "ckpt", steps=40, every=20)
    code, rows = train(m, tmp / "work")
    assert code == ExitCode.SUCCEEDED
    return tmp, rows


def test_learns_on_real_text(reference):
    _, rows = reference
    assert [r["step"] for r in rows] == list(range(1, 41))
    first = sum(r["mlm_loss"] for r in rows[:5]) / 5
    last = sum(r["mlm_loss"] for r in rows[-5:]) / 5
    assert last < first - LEARN_MARGIN, (first, last)
    assert rows[-1]["mlm_accuracy"] > rows[0]["mlm_accuracy"]
    assert all(0.0 <= r["nsp_accuracy"] <= 1.0 and r["tokens_per_s"] > 0 for r in rows)


def test_exact_resume_20_plus_20_equals_40(reference, tmp_path, shards):
    _, ref = reference
    ckpt = tmp_path / "ckpt"
    code, first = train(manifest(tmp_path / "a.yaml", shards, ckpt, steps=20, every=20), tmp_path / "w1")
    assert code == ExitCode.SUCCEEDED and [r["step"] for r in first] == list(range(1, 21))
    code, second = train(manifest(tmp_path / "b.yaml", shards, ckpt, steps=40, every=20), tmp_path / "w2")
    assert code == ExitCode.SUCCEEDED
    # The step counter continues from the checkpoint; losses match the uninterrupted run.
    assert [r["step"] for r in second] == list(range(21, 41))
    for mine, theirs in zip(first + second, ref):
        assert abs(mine["loss"] - theirs["loss"]) <= 1e-5, (mine["step"], mine["loss"], theirs["loss"])
        assert mine["tokens_seen"] == theirs["tokens_seen"]
    # The data cursor continues: every step sees the same samples as the reference, none twice.
    seen = [i for r in first + second for i in r["sample_ids"]]
    assert seen == [i for r in ref for i in r["sample_ids"]]
    assert len(seen) == len(set(seen)) == 40 * 16
    state = json.loads((ckpt / "step-00000040" / "attempt-00000001" / "state.json").read_text())
    assert state["step"] == 40 and state["cursor"] == {"epoch": 0, "sample": 640}


def test_rerun_at_max_steps_trains_nothing(reference):
    tmp, _ = reference
    code, rows = train(tmp / "job.yaml", tmp / "again")
    assert code == ExitCode.SUCCEEDED and rows == []
    assert [c.step for c in CheckpointStore(str(tmp / "ckpt")).committed()] == [40, 20]
    # Its final word reports the checkpoint's step, not 0: the job's step must not fall back.
    from orchestrator.contract import EndReason
    from orchestrator.spec import load_manifest
    from orchestrator.train.driver.entry import _final_beat
    from orchestrator.train.heartbeat import Identity

    job = load_manifest(str(tmp / "job.yaml")).with_absolute_paths()
    beat = _final_beat(Identity(job_id="t"), job, ExitCode.SUCCEEDED, EndReason.SUCCEEDED, None, {})
    assert (beat.step, beat.checkpoint.step) == (40, 40)


def test_export_loads_in_transformers_and_fills_masks(reference, tmp_path):
    from transformers import AutoModelForMaskedLM, pipeline

    from orchestrator.train.export import export_checkpoint

    tmp, _ = reference
    out = export_checkpoint(str(tmp / "ckpt"), tmp_path / "hf")
    assert out.step == 40
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in out.output.iterdir()}
    model = AutoModelForMaskedLM.from_pretrained(str(out.output))
    assert type(model).__name__ == "BertForMaskedLM"
    preds = pipeline("fill-mask", model=str(out.output), device="cpu")("the [MASK] of the module.", top_k=3)
    assert len(preds) == 3 and all(p["token_str"] and 0 < p["score"] <= 1 for p in preds)


# ZeRO-2 is the reference run's stage; ZeRO-1 trains, checkpoints and resumes (onto other worker
# counts, moments checked) in tests/chaos/test_elastic.py, and exports through the same
# zero_to_fp32 path as ZeRO-2. A resize through this file was dropped for CI time for the same reason.
@pytest.mark.parametrize("zero", [0, 3])
def test_zero_stage_trains_checkpoints_and_exports(zero, tmp_path, shards, ray_cluster):
    from orchestrator.train.export import export_checkpoint

    ckpt = tmp_path / "ckpt"
    code, rows = train(manifest(tmp_path / "j.yaml", shards, ckpt, steps=4, every=2, zero=zero), tmp_path / "w")
    assert code == ExitCode.SUCCEEDED and [r["step"] for r in rows] == [1, 2, 3, 4]
    committed = CheckpointStore(str(ckpt)).committed()
    assert [c.step for c in committed] == [4, 2] and committed[0].manifest["zero_stage"] == zero
    assert export_checkpoint(str(ckpt), tmp_path / "hf").step == 4


def test_nan_loss_exits_with_its_code(tmp_path, shards, ray_cluster, monkeypatch):
    # Weights of order 1e28 overflow fp32 in the first forward pass (a manifest cannot ask for
    # them: overrides.initializer_range must lie in (0, 1), so the workers run a poisoned model).
    monkeypatch.setattr(loop, "train_loop_per_worker", train_loop_with_poisoned_weights)
    m = manifest(tmp_path / "nan.yaml", shards, tmp_path / "ckpt", steps=5, every=1)
    code, _ = train(m, tmp_path / "w")
    assert code == ExitCode.NAN_LOSS
    assert CheckpointStore(str(tmp_path / "ckpt")).committed() == []


def test_bertctl_export_of_one_step_directory(reference, tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    tmp, _ = reference
    result = CliRunner().invoke(app, ["export", str(tmp / "ckpt" / "step-00000020"), "--output", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert "exported step 20" in result.output
    assert (tmp_path / "hf" / "model.safetensors").is_file()
