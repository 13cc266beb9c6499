"""Shared pieces of the CLI: the typer app, consoles and the error exit."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console

from orchestrator.errors import BertctlError, ManifestError

app = typer.Typer(
    name="bertctl",
    help="Preemption-proof BERT pretraining on Ray Train + DeepSpeed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
console_err = Console(stderr=True)

EXIT_USAGE = 2


@app.callback()
def _group() -> None:
    """Preemption-proof BERT pretraining on Ray Train + DeepSpeed."""


def exit_with(exc: BertctlError) -> NoReturn:
    """Print an expected error without a traceback and exit 2."""
    if isinstance(exc, ManifestError):
        console_err.print(f"[red]invalid manifest[/red] ({len(exc.problems)} problem(s)):", highlight=False)
        for path, msg in exc.problems:
            console_err.print(f"  [bold]{path}[/bold]: {msg}", highlight=False, soft_wrap=True)
    else:
        console_err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    sys.exit(EXIT_USAGE)
