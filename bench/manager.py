"""Heartbeats/s the manager sustains, with p50/p99 latency, on SQLite and PostgreSQL.

A real manager (`bertctl server`, its own process, on 127.0.0.1) takes a bounded number of
heartbeat POSTs from N concurrent trainers (threads in 2 client processes, keep-alive
connections), each speaking for its own job's running attempt with its own attempt token:
once back to back (the most it sustains) and once paced at the goal rate of 500/s in total
(the latency a trainer sees at that load). Prints a table; the last line is the ratios line
(heartbeats/s from the back-to-back run, p99 from the paced run).

    .venv/bin/python bench/manager.py [--requests 4000] [--clients 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.manager.auth import hash_token, new_token  # noqa: E402
from orchestrator.manager.store import Store  # noqa: E402
from orchestrator.spec import parse_manifest  # noqa: E402

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GOAL_PER_S, GOAL_P99_MS = 500.0, 50.0


def manifest(i: int, tmp: Path) -> dict:
    return parse_manifest({
        "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": f"bench-{i}"},
        "spec": {"data": {"shards": str(tmp / "s"), "seq_len": 32, "nsp": False},
                 "training": {"max_steps": 10**6, "global_batch_size": 4, "micro_batch_size": 4},
                 "checkpoint": {"uri": str(tmp / "c")}}}).to_dict()


def seed(url: str, tmp: Path, clients: int) -> list[tuple[str, str]]:
    """Jobs with a running attempt each, as the supervisor would leave them; returns (job, token)."""
    store = Store(url)
    store.migrate()
    pairs = []
    for i in range(clients):
        job, _ = store.create_job(manifest(i, tmp), "local", time.time())
        tok = new_token()
        store.start_attempt(job["id"], 1, hash_token(tok), time.time())
        pairs.append((job["id"], tok))
    store.close()
    return pairs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, tmp: Path, admin: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "BERTCTL_ADMIN_TOKEN": admin, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "server", "--port", str(port),
                             "--data-dir", str(tmp), "--database-url", url, "--no-supervise"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-2000:]}")


def trainer(port: int, job_id: str, token: str, n: int, out: list, interval_s: float | None) -> None:
    """Send n heartbeats back to back, or paced every interval_s. Latency runs from the actual send
    (a late wake-up of this client thread on a busy machine is not the server's); a server that
    falls behind still shows, as a lower achieved rate in the paced run."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    path = f"/v1/jobs/{job_id}/heartbeat"
    errors = 0
    begin = time.perf_counter()
    for step in range(1, n + 1):
        body = json.dumps({"attempt": 1, "step": step, "loss": 3.0, "mlm_accuracy": 0.2,
                           "tokens_per_s": 1e4, "checkpoint_seconds": 0.0})
        if interval_s:
            time.sleep(max(0.0, begin + (step - 1) * interval_s - time.perf_counter()))
        t0 = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        out.append(time.perf_counter() - t0)
        errors += resp.status != 200
    out.append(("errors", errors))


def client_process(port: int, pairs: list[tuple[str, str]], n: int, start_at: float, interval_s, q) -> None:
    results: list[list] = [[] for _ in pairs]
    threads = [threading.Thread(target=trainer, args=(port, j, t, n, results[i], interval_s))
               for i, (j, t) in enumerate(pairs)]
    time.sleep(max(0.0, start_at - time.time()))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.put([x for r in results for x in r])


def load(port: int, pairs: list[tuple[str, str]], requests: int, rate: float | None = None, procs: int = 2) -> dict:
    n = requests // len(pairs)
    interval_s = len(pairs) / rate if rate else None
    q = mp.get_context("fork").Queue()
    start_at = time.time() + 1.0
    workers = [mp.get_context("fork").Process(target=client_process, args=(port, pairs[i::procs], n, start_at, interval_s, q))
               for i in range(procs)]
    for w in workers:
        w.start()
    samples = [x for _ in workers for x in q.get()]
    elapsed = time.time() - start_at
    for w in workers:
        w.join()
    lat = sorted(x for x in samples if not isinstance(x, tuple))
    errors = sum(x[1] for x in samples if isinstance(x, tuple))
    return {"n": len(lat), "per_s": len(lat) / elapsed, "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "errors": errors}


def run(url: str, requests: int, clients: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bertctl-bench-"))
    pairs = seed(url, tmp, clients)
    proc, port = start_server(url, tmp, new_token())
    try:
        return {"max": load(port, pairs, requests), "paced": load(port, pairs, requests, rate=GOAL_PER_S)}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4000, help="heartbeats per database (bounded)")
    p.add_argument("--clients", type=int, default=8, help="concurrent trainers")
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    results = {"sqlite": run(f"sqlite:///{tempfile.mkdtemp()}/bench.db", args.requests, args.clients)}
    dbname = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    try:
        results["postgres"] = run(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}", args.requests, args.clients)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after (other work on a shared machine skews p99)")
    print(f"{'database':<10} {'load':<16} {'requests':>8} {'clients':>7} {'heartbeats/s':>12} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6}")
    for name, both in results.items():
        for kind, r in both.items():
            label = "back-to-back" if kind == "max" else f"paced {GOAL_PER_S:g}/s"
            print(f"{name:<10} {label:<16} {r['n']:>8} {args.clients:>7} {r['per_s']:>12.1f} {r['p50_ms']:>8.2f} "
                  f"{r['p99_ms']:>8.2f} {r['errors']:>6}")
    # heartbeats/s: the most the manager sustained; p99: latency while it is offered the goal rate
    s = {"per_s": results["sqlite"]["max"]["per_s"], "p99_ms": results["sqlite"]["paced"]["p99_ms"]}
    pg = {"per_s": results["postgres"]["max"]["per_s"], "p99_ms": results["postgres"]["paced"]["p99_ms"]}
    print(f"ratios: heartbeats_per_s_sqlite={s['per_s']:.1f} heartbeats_per_s_postgres={pg['per_s']:.1f} "
          f"p99_ms_sqlite={s['p99_ms']:.2f} p99_ms_postgres={pg['p99_ms']:.2f} "
          f"postgres/goal={pg['per_s'] / GOAL_PER_S:.2f}")


if __name__ == "__main__":
    main()
