"""``spec.training.unpad`` through the whole worker (2 Ray workers, DeepSpeed, CPU fp32): a packed
run trains exactly as the padded one on the same samples, and a packed run stopped at a checkpoint
resumes exactly on another worker count (2 -> 1, through the universal format), at ZeRO-2; at
ZeRO-3 a packed run trains as the padded one too. Dropout is off in both runs, because its draws
follow the tensor's shape, which packing changes by design (tests/train_units/test_unpad.py holds
the unit check)."""

from __future__ import annotations

import json

import pytest

from orchestrator.contract import ExitCode
from tests.train.conftest import manifest, train

pytestmark = pytest.mark.e2e

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def test_packed_run_and_its_elastic_resume_equal_the_padded_run(tmp_path, shards, ray_cluster):
    def run(name: str, ckpt: str, steps: int, unpad: bool, workers: int = 2) -> list[dict]:
        m = manifest(tmp_path / f"{name}.yaml", shards, tmp_path / ckpt, steps=steps, every=3,
                     overrides=NO_DROPOUT, unpad=unpad, workers=workers)
        code, rows = train(m, tmp_path / name)
        assert code == ExitCode.SUCCEEDED
        return rows

    padded = run("padded", "ckpt-padded", 6, unpad=False)
    packed = run("packed", "ckpt-packed", 3, unpad=True) + run("resumed", "ckpt-packed", 6, unpad=True, workers=1)
    assert [r["step"] for r in packed] == [r["step"] for r in padded] == list(range(1, 7))
    for mine, theirs in zip(packed, padded):
        for key in ("loss", "mlm_loss", "nsp_loss"):
            assert abs(mine[key] - theirs[key]) <= 1e-5, (mine["step"], key, mine[key], theirs[key])
        assert mine["tokens_seen"] == theirs["tokens_seen"]
        assert mine["sample_ids"] == theirs["sample_ids"]
    [state] = (tmp_path / "ckpt-packed" / "step-00000006").glob("attempt-*/state.json")
    assert json.loads(state.read_text())["world_size"] == 1  # the resumed part really ran on one worker


def test_packed_run_under_zero3_equals_the_padded_run(tmp_path, shards, ray_cluster):
    # ZeRO-3 gathers each module's parameters in its forward hooks; the packed path calls the NSP
    # pooler itself, on the rows' [CLS] tokens, outside BertModel's forward.
    rows = {}
    for unpad in (False, True):
        m = manifest(tmp_path / f"{unpad}.yaml", shards, tmp_path / f"ckpt-{unpad}", steps=4, every=2, zero=3,
                     overrides=NO_DROPOUT, unpad=unpad)
        code, rows[unpad] = train(m, tmp_path / f"work-{unpad}")
        assert code == ExitCode.SUCCEEDED
    assert [r["step"] for r in rows[True]] == [1, 2, 3, 4]
    for packed, padded in zip(rows[True], rows[False]):
        for key in ("loss", "nsp_loss", "nsp_accuracy"):
            assert abs(packed[key] - padded[key]) <= 1e-5, (packed["step"], key, packed[key], padded[key])
