"""Chaos: kill `bertctl prepare` in the middle, re-run: the same index and shards as a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.data.index import ShardIndex

CLI = [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def run_prepare(out: Path, vocab: str, inputs: list[str]) -> subprocess.Popen:
    args = [a for i in inputs for a in ("--input", i)]
    return subprocess.Popen(CLI + ["prepare", *args, "--output", str(out), "--seq-len", "32", "--vocab", vocab,
                                   "--shard-mb", "0.01", "--local", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def files(root: Path) -> dict[str, bytes]:
    # a kill during a write can leave a hidden temporary file; nothing ever reads those
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".tmp")}


@pytest.mark.chaos
def test_killed_prepare_resumes_to_identical_output(tmp_path, small_vocab, small_corpus):
    inputs = [*small_corpus, *small_corpus[:2]]  # five units; the kill lands after the second
    clean = tmp_path / "clean"
    assert run_prepare(clean, small_vocab, inputs).wait(timeout=120) == 0

    out = tmp_path / "crashed"
    proc = run_prepare(out, small_vocab, inputs)
    deadline = time.monotonic() + 120
    while not (out / "_prepare/unit-00001.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "index.json").exists(), "prepare finished before the kill; the test proves nothing"
    with pytest.raises(Exception, match="no index.json"):
        ShardIndex.load(str(out))  # a crashed prepare never leaves an index

    assert run_prepare(out, small_vocab, inputs).wait(timeout=120) == 0
    clean_files, crashed_files = files(clean), files(out)
    assert crashed_files == clean_files
    assert ShardIndex.load(str(out)).to_json() == ShardIndex.load(str(clean)).to_json()
    ShardIndex.load(str(out)).verify_all()
