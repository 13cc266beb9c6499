"""The layers of DESIGN.md, enforced by import-linter contracts in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_manager_imports_without_training_stack():
    # A fresh interpreter that imports every manager module must not pull in torch or Ray Train.
    code = (
        "import importlib, pkgutil, sys, orchestrator.manager as m\n"
        "for i in pkgutil.walk_packages(m.__path__, 'orchestrator.manager.'):\n"
        "    if '.migrations' not in i.name:  # alembic runs those scripts itself\n"
        "        importlib.import_module(i.name)\n"
        "bad = [x for x in ('torch', 'deepspeed', 'ray.train', 'transformers') if x in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
