"""The `bertctl` command line: thin wrappers over the layers below.

Each command group lives in its own module and registers itself on ``app``; ``main`` turns
every expected error into one line (or one line per manifest problem) and exit code 2.
"""

from __future__ import annotations

import sys

# Importing the command modules registers their commands on `app`.
from orchestrator.cli import audit_cmds, data_cmds, finetune_cmds, jobs_cmds, k8s_cmds, spec_cmds, spot_cmds, train_cmds  # noqa: F401
from orchestrator.cli.common import app, console_err, exit_with
from orchestrator.errors import BertctlError


def main() -> None:
    try:
        app()
    except BertctlError as exc:
        exit_with(exc)
    except KeyboardInterrupt:
        console_err.print("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]
