"""`bertctl render`: print the Kubernetes objects of one attempt, exactly as the KubeRay backend creates them."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestrator.cli.common import app
from orchestrator.manager.backends import kuberay_render as render
from orchestrator.spec import load_manifest

DEFAULT_MANAGER_URL = "http://bertctl-manager.bertctl.svc:8470"


@app.command("render")
def render_cmd(
    manifest: Path = typer.Argument(..., help="A PretrainJob YAML file."),
    attempt: int = typer.Option(1, "--attempt", min=1, help="Attempt number (the fencing token)."),
    job_id: str = typer.Option(None, "--job-id", help="Job id; defaults to metadata.name."),
    manager_url: str = typer.Option(DEFAULT_MANAGER_URL, "--manager-url", help="URL the trainer reports to."),
) -> None:
    """Print the ConfigMap and RayJob of an attempt as YAML (exit 2 naming each field of a bad manifest).

    The attempt's Secret (its token) is created by the manager at launch and only referenced here.
    """
    job = load_manifest(manifest)
    jid = job_id or job.metadata.name
    objects = render.render_attempt(job, jid, attempt, manager_url)
    secret = render.secret_name(jid, attempt)
    typer.echo(f"# Secret {job.spec.kubernetes.namespace}/{secret} (key '{render.TOKEN_KEY}') is created by the "
               "manager at launch; pods read it through secretKeyRef.")
    typer.echo(render.to_yaml(objects), nl=False)
