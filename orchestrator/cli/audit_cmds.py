"""`bertctl audit JOB`: did every step consume exactly the samples the plan gives it?

The manager keeps the data ledger's value from the heartbeats (one 16-hex value per recorded
step; data/ledger.py). This command recomputes the planned chain from the job's manifest and its
prepared data (seed, shuffle window and global batch fix the order), and compares. It needs the
shards' index (local or S3), never a sample id stored anywhere.
"""

from __future__ import annotations

from typing import Optional

import typer

from orchestrator.cli.common import app, console
from orchestrator.cli.jobs_cmds import TOKEN, URL, _client
from orchestrator.errors import DataError
from orchestrator.spec import parse_manifest


@app.command("audit")
def audit_cmd(job_id: str = typer.Argument(...), url: Optional[str] = URL, token: Optional[str] = TOKEN) -> None:
    """Check a job's data ledger against its planned sample order; exit 1 at the first divergence."""
    from orchestrator.data.index import ShardIndex
    from orchestrator.data.ledger import LedgerPoint, audit, planned_ledger

    client = _client(url, token)
    job = parse_manifest(client.get(job_id)["manifest"])
    points = [LedgerPoint(p["attempt"], p["step"], p["sample_digest"], p.get("world_size"))
              for p in client.metrics(job_id) if p.get("sample_digest")]
    if not points:
        raise DataError(f"job {job_id} has no data ledger values yet (no step reported one); audit it "
                        "after it has trained, or re-run it with this version of bertctl")
    d, t = job.spec.data, job.spec.training
    planned = dict(planned_ledger(ShardIndex.load(d.shards), seed=d.seed, shuffle_window=d.shuffle_window,
                                  global_batch_size=t.global_batch_size, steps=max(p.step for p in points)))
    diverged, message = audit(points, planned)
    console.print(message)
    if diverged is not None:
        raise typer.Exit(1)
