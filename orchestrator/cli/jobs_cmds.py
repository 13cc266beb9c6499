"""`bertctl server | submit | list | status | logs | events | cancel`: the job manager and its client."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from orchestrator.cli.common import app, console
from orchestrator.cli.evaluation_view import evaluation_lines
from orchestrator.cli.follow import STATUS_BAR, fmt_count, fmt_loss, fmt_seconds, fmt_share, follow_job
from orchestrator.contract import ENV_MANAGER_URLS
from orchestrator.manager.phases import Phase
from orchestrator.spec import read_manifest_text

if TYPE_CHECKING:  # the server module loads FastAPI; only `bertctl server` needs it at run time
    from orchestrator.manager.server import ManagerConfig

URL = typer.Option(None, "--url", help="Manager URL (default: $BERTCTL_URL or http://127.0.0.1:8470).")
TOKEN = typer.Option(None, "--token", help="Bearer token (default: $BERTCTL_TOKEN).")
# Several `bertctl server` replicas on one PostgreSQL (docs/manager.md, "A highly available manager").
LEASE_TTL = typer.Option(8.0, "--lease-ttl-s", min=1.0, help="The supervisor's lease: a dead supervising "
                         "replica is replaced within about this.")
MANAGER_URLS = typer.Option(None, "--manager-urls", envvar=ENV_MANAGER_URLS, help="Every replica's URL, "
                            "comma-separated: local trainers fail over between them (on Kubernetes the Service "
                            "is enough).")


def _client(url: str | None, token: str | None):
    from orchestrator.manager.client import ManagerClient

    return ManagerClient(url, token)


@app.command("server")
def server_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8470, "--port", help="Port to listen on."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="SQLAlchemy URL; default "
                                               "$BERTCTL_DATABASE_URL or SQLite in the data dir."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Logs and SQLite file (default "
                                            "$BERTCTL_DATA_DIR or ~/.bertctl)."),
    supervise: bool = typer.Option(True, "--supervise/--no-supervise", help="Run the supervisor loop "
                                   "(--no-supervise: API only, e.g. for benchmarks)."),
    backend: str = typer.Option("local", "--backend", envvar="BERTCTL_BACKEND", help="Where new jobs run: "
                                "local (process groups on this machine) or kuberay (a RayJob per attempt)."),
    warm_ray: bool = typer.Option(True, "--warm-ray/--no-warm-ray", help="Local backend: keep one Ray head "
                                  "for every attempt (--no-warm-ray: each attempt starts its own cluster)."),
    check: bool = typer.Option(False, "--check-config", help="Check the token, backend and database URL, "
                               "print the resolved settings and exit (no database, socket or cluster is touched)."),
    lease_ttl_s: float = LEASE_TTL,
    manager_urls: Optional[str] = MANAGER_URLS,
) -> None:
    """Run the job manager (API + supervisor; replicas on one PostgreSQL: one supervises) in the
    foreground. Needs BERTCTL_ADMIN_TOKEN(_FILE)."""
    from orchestrator.manager.server import ManagerConfig, default_data_dir

    _trainers_report_to(manager_urls)
    cfg = ManagerConfig(host=host, port=port, database_url=database_url, data_dir=data_dir or default_data_dir(),
                        supervise=supervise, backend=backend, warm_ray=warm_ray, lease_ttl_s=lease_ttl_s)
    if check:
        _check_config(cfg)
    else:
        _serve(cfg)


def _trainers_report_to(manager_urls: str | None) -> None:
    """The local backend hands this to every trainer (contract.INHERITED_BERTCTL_ENV)."""
    if manager_urls:
        os.environ[ENV_MANAGER_URLS] = manager_urls


def _check_config(cfg: ManagerConfig) -> None:
    from orchestrator.manager.server import check_config

    settings = check_config(cfg)
    console.print("config ok: " + " ".join(f"{k}={v}" for k, v in settings.items()), highlight=False,
                  soft_wrap=True)


def _serve(cfg: ManagerConfig) -> None:
    from orchestrator.manager.server import Manager

    manager = Manager(cfg)
    console.print(f"bertctl manager on {manager.url} (backend: {cfg.backend}, database: {manager.store.dialect}, "
                  f"data: {cfg.data_dir}); dashboard {manager.url}/ui", highlight=False, soft_wrap=True)
    manager.serve_forever()


@app.command("submit")
def submit_cmd(file: Path = typer.Argument(..., help="PretrainJob manifest (YAML or JSON)."),
               submission_id: Optional[str] = typer.Option(None, "--id", help="Client submission id: "
                                                           "submitting the same id twice creates one job."),
               url: Optional[str] = URL, token: Optional[str] = TOKEN) -> None:
    """Submit a manifest to the manager; prints the job id."""
    job = _client(url, token).submit(read_manifest_text(file), submission_id)
    verb = "submitted" if job.get("created", True) else "already submitted as"
    console.print(f"{verb} [bold]{job['id']}[/bold]", highlight=False)


@app.command("list")
def list_cmd(phase: Optional[str] = typer.Option(None, "--phase"), name: Optional[str] = typer.Option(None, "--name"),
             url: Optional[str] = URL, token: Optional[str] = TOKEN) -> None:
    """List jobs, newest first."""
    table = Table("JOB", "PHASE", "STEP", "ATTEMPT", "CREATED")
    for j in _client(url, token).list(phase, name):
        table.add_row(j["id"], j["phase"], f"{j['step']}/{j['max_steps']}", str(j["current_attempt"]), _ts(j["created_at"]))
    console.print(table)


@app.command("status")
def status_cmd(job_id: str = typer.Argument(...), follow: bool = typer.Option(False, "--follow", "-f",
               help="Live progress until the job ends."), url: Optional[str] = URL, token: Optional[str] = TOKEN) -> None:
    """Show a job; with --follow a live progress bar (step, loss, tokens/s, ETA, attempt)."""
    client = _client(url, token)
    job = follow_job(client, job_id, STATUS_BAR) if follow else client.get(job_id)
    _print_job(job)
    evaluation = ((job.get("manifest") or {}).get("spec") or {}).get("evaluation")
    if evaluation:  # spec.evaluation: the newest scores per task (docs/finetune.md)
        console.print("\n".join(evaluation_lines(evaluation, client.evaluations(job_id))), highlight=False,
                      soft_wrap=True, markup=False)
    if follow and job["phase"] != Phase.SUCCEEDED:
        sys.exit(1)


@app.command("logs")
def logs_cmd(job_id: str = typer.Argument(...), follow: bool = typer.Option(False, "--follow", "-f"),
             attempt: Optional[int] = typer.Option(None, "--attempt"), url: Optional[str] = URL,
             token: Optional[str] = TOKEN) -> None:
    """Print a job's trainer output (every attempt, or one); -f follows until the job ends."""
    out = sys.stdout.buffer
    for chunk in _client(url, token).logs(job_id, follow, attempt):
        out.write(chunk)
        out.flush()


@app.command("events")
def events_cmd(job_id: str = typer.Argument(...), url: Optional[str] = URL, token: Optional[str] = TOKEN) -> None:
    """A job's history: every state change, checkpoint and attempt end."""
    for e in _client(url, token).events(job_id):
        att = f" [{e['attempt']}]" if e["attempt"] else ""
        console.print(f"{_ts(e['ts'])} {e['type']:<15}{att} {e['message']}", highlight=False, soft_wrap=True)


@app.command("cancel")
def cancel_cmd(job_id: str = typer.Argument(...), url: Optional[str] = URL, token: Optional[str] = TOKEN) -> None:
    """Cancel a job in any phase; its running attempt is stopped."""
    res = _client(url, token).cancel(job_id)
    console.print(f"{job_id}: {'cancelling' if res['cancel_requested'] else res['phase']}", highlight=False)


def _print_job(job: dict) -> None:
    ck = job.get("checkpoint")
    g = job.get("goodput") or {}
    m = job.get("metrics") or {}
    lines = [f"job        {job['id']}  ({job['phase']})", f"message    {job['message'] or '-'}",
             f"step       {job['step']}/{job['max_steps']}  loss {fmt_loss(m.get('loss'))}  "
             f"{fmt_count(m.get('tokens_per_s'))} tokens/s",
             f"attempt    {job['current_attempt']}  restarts {job['restarts_used']}"
             + (f"  starting: {job['startup_phase']}" if job.get("startup_phase") else ""),
             f"checkpoint {'-' if not ck else str(ck['step']) + ' ' + ck['uri']}",
             f"goodput    productive {fmt_share(g.get('productive_fraction'))}  steps lost {g.get('steps_lost', '-')}  "
             f"recovery {fmt_seconds(g.get('recovery_s'))}  checkpointing {fmt_seconds(g.get('checkpoint_s'))}"
             + (f"  resizes {g['resizes']} ({fmt_seconds(g.get('resize_s'))} paused)" if g.get("resizes") else "")]
    for a in job.get("attempts", []):
        lines.append(f"  attempt {a['number']}: {a['state']} {a['end_reason'] or ''} step {a['last_step']}"
                     + (f" exit {a['exit_code']}" if a["exit_code"] is not None else ""))
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


def _ts(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
