"""`bertctl run` (prepare from a manifest's source -> train through the embedded manager -> export ->
fill-mask) and `bertctl export`, with the real trainer (Ray + DeepSpeed on CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.manager.store import Store
from tests.train.conftest import MODULES, manifest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
STEPS = 100  # enough to measure how much the trainer log grows per step
MAX_LOG_BYTES_PER_STEP = 200


def log_bytes_per_step(log: bytes, steps: int) -> float:
    """The trainer log's growth while training: from the workers' last `engine_built` to `fit_end`."""
    return (log.index(b"timing: fit_end") - log.rindex(b"timing: engine_built")) / steps


def test_bertctl_run_prepares_trains_exports_and_fills_masks(tmp_path):
    from orchestrator.data.sources import module_docstrings, stdlib_files

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(module_docstrings(f) for f in stdlib_files() if f.stem in MODULES[:8]))
    job = manifest(tmp_path / "job.yaml", tmp_path / "shards", tmp_path / "out" / "ckpt", steps=STEPS, every=50,
                   name="cli-run")
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["data"]["prepare"] = {"inputs": [str(corpus)]}
    job.write_text(yaml.safe_dump(doc))
    data = tmp_path / "bertctl"
    out = subprocess.run([str(Path(sys.executable).with_name("bertctl")), "run", str(job), "--data-dir", str(data)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "shards" / "index.json").is_file()
    assert f"trained steps 1-{STEPS}" in out.stdout and "1 attempt(s)" in out.stdout
    assert (tmp_path / "out" / "export" / "model.safetensors").is_file()
    assert "[MASK]" in out.stdout and "->" in out.stdout  # the fill-mask example was printed
    # It went through the manager: the embedded store holds the job, its attempt, checkpoints, events.
    store = Store(f"sqlite:///{data / 'manager.db'}")
    try:
        (row,) = store.list_jobs()
        attempts, events = store.attempts(row["id"]), store.events(row["id"])
        checkpoints = store.checkpoints(row["id"])
    finally:
        store.close()
    assert row["phase"] == "SUCCEEDED" and row["step"] == STEPS
    assert [(a["number"], a["end_reason"], a["exit_code"]) for a in attempts] == [(1, "succeeded", 0)]
    assert attempts[0]["heartbeats"] >= 1 and {c["step"] for c in checkpoints} >= {STEPS}
    assert {"submitted", "succeeded"} <= {e["type"] for e in events}
    log = (data / "jobs" / row["id"] / "attempt-1" / "trainer.log").read_bytes()
    # Quiet logs: no per-step sample ids or report echoes, no Ray Train polling warnings.
    for noise in (b"sample_ids", b"Reporting training result", b"Failed to query Ray Train Controller"):
        assert noise not in log, noise
    assert log_bytes_per_step(log, STEPS) <= MAX_LOG_BYTES_PER_STEP, log.decode()[-5000:]
    # Every worker's own timing lines, not folded into one by Ray's log deduplication.
    assert log.count(b"timing: worker_start") == 2 and log.count(b"timing: engine_built") == 2
    # TensorBoard's reader reads the run's scalars from beside the checkpoints.
    from tests.train.test_tensorboard import read_scalars

    assert [s for s, _ in read_scalars(tmp_path / "out" / "ckpt" / "tensorboard")["train/loss"]] == \
        list(range(1, STEPS + 1))


def test_bertctl_run_rejects_a_bad_manifest_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: bertctl/v1\nkind: PretrainJob\nmetadata: {name: x}\nspec: {training: {}}\n")
    out = subprocess.run([str(Path(sys.executable).with_name("bertctl")), "run", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "spec.data" in out.stderr


def test_bertctl_export_of_a_missing_checkpoint_says_what_to_do(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nothing"), "--output", str(tmp_path / "hf")])
    assert result.exit_code != 0
    assert "no committed checkpoint" in str(result.exception) + (result.output or "")
