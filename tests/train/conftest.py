"""Fixtures for the trainer tests: a tiny real-text corpus and one Ray cluster per session.

The corpus is real English prose: the docstrings of a few standard-library modules, written
to a text file and prepared into shards (seq_len 64, a 1000-token WordPiece vocabulary).
Training runs go through the real entry point (``orchestrator.train.driver.entry.main``) on the
shared cluster, so each run costs a Ray Train start, not a Ray cluster start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

MODULES = ("argparse", "pathlib", "random", "shutil", "textwrap", "subprocess", "functools", "heapq",
           "bisect", "statistics", "fractions", "calendar", "csv", "string", "copy")


def build_corpus(out: Path, seq_len: int = 64, vocab_size: int = 1000, nsp: bool = True) -> Path:
    from orchestrator.data.prepare import PrepareConfig, prepare
    from orchestrator.data.sources import module_docstrings, stdlib_files

    out.mkdir(parents=True, exist_ok=True)
    files = [f for f in stdlib_files() if f.stem in MODULES and f.parent.name != "multiprocessing"]
    (out / "corpus.txt").write_text("\n\n".join(module_docstrings(f) for f in files))
    shards = out / ("shards-nsp" if nsp else "shards-mlm")
    prepare(PrepareConfig(inputs=[str(out / "corpus.txt")], output=str(shards), seq_len=seq_len,
                          vocab_size=vocab_size, nsp=nsp, use_ray=False), progress=False)
    return shards


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="package")  # torn down before the next test package starts its own Ray
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def manifest(path: Path, shards: Path, ckpt: Path, *, steps: int = 8, zero: int = 2, every: int = 4,
             keep_last: int = 3, workers: int = 2, schedule: str = "constant", lr: float = 2e-3,
             nsp: bool = True, overrides: dict | None = None, name: str = "t", unpad: bool = False) -> Path:
    """A tiny PretrainJob manifest (2 layers, hidden 64, seq_len 64) written as YAML."""
    model = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 64, **(overrides or {})}
    doc = {
        "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": name},
        "spec": {
            "model": {"preset": "bert-tiny", "overrides": model},
            "tokenizer": {"vocab_size": 1000},
            "data": {"shards": str(shards), "seq_len": 64, "seed": 7, "nsp": nsp},
            "training": {"max_steps": steps, "global_batch_size": 16, "micro_batch_size": 4, "lr": lr,
                         "warmup_steps": 2, "schedule": schedule, "unpad": unpad},
            "deepspeed": {"zero_stage": zero},
            "resources": {"workers": workers, "cpus_per_worker": 1},
            "checkpoint": {"uri": str(ckpt), "every_steps": every, "keep_last": keep_last},
        },
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def read_metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def train(manifest_path: Path, work: Path) -> tuple[int, list[dict]]:
    """One attempt through the real entry point on the session's Ray cluster."""
    from orchestrator.train.driver.entry import main

    work.mkdir(parents=True, exist_ok=True)
    metrics = work / "metrics.jsonl"
    code = main(["--manifest", str(manifest_path), "--work-dir", str(work), "--metrics-file", str(metrics),
                 "--no-prepare"])
    return code, (read_metrics(metrics) if metrics.exists() else [])
