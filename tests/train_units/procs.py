"""Start real rank processes on loopback (MASTER_ADDR=127.0.0.1, a free port) and reap them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(script: Path, world_size: int, args: dict, log_dir: Path, name: str) -> list:
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        log = open(log_dir / f"{name}-rank{rank}.log", "w")
        procs.append((subprocess.Popen([sys.executable, str(script), json.dumps(args)], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    return procs


def wait_ranks(procs: list, timeout: float = 120) -> list[int]:
    """Exit codes of every rank; a rank still running after ``timeout`` is killed (code -9)."""
    codes = []
    try:
        for proc, _ in procs:
            try:
                codes.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return codes


def run_ranks(script: Path, world_size: int, args: dict, log_dir: Path, name: str,
              timeout: float = 120) -> None:
    codes = wait_ranks(start_ranks(script, world_size, args, log_dir, name), timeout)
    if any(codes):
        logs = "\n".join((log_dir / f"{name}-rank{r}.log").read_text()[-3000:] for r in range(world_size))
        raise AssertionError(f"{name}: exit codes {codes}\n{logs}")
