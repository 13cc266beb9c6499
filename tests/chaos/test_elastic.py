"""Resume 2 -> 1 -> 3 workers under ZeRO-1 (three attempts with different worker counts).

The global batch (12 = micro 2 x grad-accum 3/6/2 x 2/1/3 workers) is kept. Right after each load
(universal-format conversion in the load path), every parameter's full fp32 weight and both Adam
moments, gathered across the ZeRO partitions (so padding does not matter), equal what the previous
attempt held on its other worker count when it saved, and the weights equal the consolidated fp32
weights in the checkpoint files. Training continues to max_steps; across the whole run every step
consumed exactly the uninterrupted stream's samples (none repeated, none skipped).

ZeRO-2 and ZeRO-3 take the same universal-format path on a resize; their loads onto 1 and 3 ranks
are checked moment by moment in tests/train_units/test_universal.py. One stage here keeps CI time.
"""

from __future__ import annotations

import functools

import pytest
import torch

from orchestrator.spec import load_manifest
from orchestrator.train.checkpoint import CheckpointStore
from orchestrator.train.worker import inputs, loop
from tests.chaos.conftest import attempt, job
from tests.train_units.state_dump import train_loop_dumping_state

pytestmark = pytest.mark.chaos
GLOBAL = 12
PLAN = [(2, 3), (1, 6), (3, 9)]  # (workers, max_steps) of attempts 1, 2, 3
ZERO = 1


def _expected_samples(manifest_path, steps: int) -> list[list[int]]:
    stream = inputs.job_stream(load_manifest(str(manifest_path)), 0, 1, None)
    try:
        it = iter(stream)
        return [sorted(int(i) for i in next(it).sample_ids) for _ in range(steps)]
    finally:
        stream.close()


def _saved_fp32(ckpt_root, step: int) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    committed = next(c for c in CheckpointStore(str(ckpt_root)).committed() if c.step == step)
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root / f"step-{step:08d}" / committed.root), tag="ds")


def _assert_same_training_state(saved: dict, loaded: dict, where: str) -> None:
    assert saved["world_size"] != loaded["world_size"], where
    assert saved["adam_steps"] == loaded["adam_steps"] and saved["adam_steps"], where
    assert saved["params"].keys() == loaded["params"].keys(), where
    for name, per_key in saved["params"].items():
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(per_key[key], loaded["params"][name][key]), f"{where}: {name}.{key} differs"
    assert any(v["exp_avg_sq"].abs().sum() > 0 for v in saved["params"].values()), "moments must be real"


def test_resume_2_to_1_to_3_workers(tmp_path, shards, ray_cluster, monkeypatch):
    ckpt, dump = tmp_path / "ckpt", tmp_path / "state"
    # The workers run the production loop plus state dumps around every save and load (a test aid).
    monkeypatch.setattr(loop, "train_loop_per_worker", functools.partial(train_loop_dumping_state, str(dump)))
    rows: dict[int, dict] = {}
    for n, (workers, steps) in enumerate(PLAN, start=1):
        m = job(tmp_path / f"job-{n}.yaml", shards, str(ckpt), steps=steps, every=3, zero=ZERO, workers=workers,
                training={"global_batch_size": GLOBAL, "micro_batch_size": 2})
        code, got = attempt(m, tmp_path, n, monkeypatch)
        assert code == 0, f"attempt {n} on {workers} workers"
        assert [r["step"] for r in got] == list(range(steps - 2, steps + 1)), "continues after the loaded step"
        for r in got:
            rows[r["step"]] = {**r, "attempt": n, "workers": workers}
        if n > 1:
            step, where = steps - 3, f"ZeRO-{ZERO}, {PLAN[n - 2][0]} -> {workers} workers"
            loaded = torch.load(f"{dump}-loaded-step{step:08d}.pt")
            _assert_same_training_state(torch.load(f"{dump}-saved-step{step:08d}.pt"), loaded, where)
            in_files = _saved_fp32(ckpt, step)
            shared = set(in_files) & set(loaded["params"])
            assert shared == set(loaded["params"]), f"{where}: the checkpoint files lack parameters"
            for name in shared:
                assert torch.equal(in_files[name].float(), loaded["params"][name]["fp32"]), f"{where}: {name}"
    expected = _expected_samples(tmp_path / "job-3.yaml", 9)
    for step in range(1, 10):
        ids = rows[step]["sample_ids"]
        assert len(ids) == GLOBAL, f"step {step}: global batch kept"
        assert sorted(ids) == expected[step - 1], f"step {step}: not the uninterrupted stream's samples"
    all_ids = [i for s in range(1, 10) for i in rows[s]["sample_ids"]]
    assert len(all_ids) == len(set(all_ids)), "a sample was repeated"
    assert all(r["loss"] > 0 for r in rows.values())
    _assert_the_ledger_proves_it(rows, tmp_path / "job-3.yaml", 9)


def _assert_the_ledger_proves_it(rows: dict[int, dict], manifest_path, steps: int) -> None:
    """The data ledger (what `bertctl audit` checks) says the same as the sample ids above, and a
    tampered value is named by its step."""
    from orchestrator.data.index import ShardIndex
    from orchestrator.data.ledger import LedgerPoint, audit, planned_ledger

    m = load_manifest(str(manifest_path))
    planned = dict(planned_ledger(ShardIndex.load(m.spec.data.shards), seed=m.spec.data.seed, steps=steps,
                                  shuffle_window=m.spec.data.shuffle_window, global_batch_size=GLOBAL))
    points = [LedgerPoint(r["attempt"], step, r["sample_digest"], r["workers"]) for step, r in rows.items()]
    assert audit(points, planned) == (None, "every step consumed exactly its planned samples, across 3 "
                                            "attempt(s) and 2 resize(s) (9 recorded steps checked)")
    tampered = [LedgerPoint(p.attempt, p.step, "0" * 16 if p.step == 5 else p.digest, p.world_size) for p in points]
    assert audit(tampered, planned)[0] == 5
