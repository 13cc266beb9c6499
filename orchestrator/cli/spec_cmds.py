"""`bertctl validate`."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestrator.cli.common import app, console
from orchestrator.spec import load_manifest


@app.command()
def validate(manifest: Path = typer.Argument(..., help="A PretrainJob YAML file.")) -> None:
    """Check a manifest; exit 0 when valid, 2 listing every problem when not."""
    job = load_manifest(manifest)
    workers = job.spec.resources.workers
    console.print(f"[green]ok[/green] {job.metadata.name}: {job.spec.model.preset}, "
                  f"{job.spec.training.max_steps} steps, workers={workers if isinstance(workers, int) else f'{workers.min}-{workers.max}'}, "
                  f"ZeRO-{job.spec.deepspeed.zero_stage}", highlight=False)
