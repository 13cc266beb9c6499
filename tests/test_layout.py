"""The layout rules of DESIGN.md ("Style"), checked on the source so that they stay true: small functions,
modules under ~400 lines, and a trainer package grouped by concern rather than a flat heap of modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"
MAX_FUNCTION_LINES = 30
MAX_MODULE_LINES = 400
MAX_TRAIN_TOP_LEVEL_MODULES = 6
# Alembic writes one function per migration step; those are data, not code to keep small.
EXEMPT = ("manager/migrations/versions/",)


def _modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not any(p.relative_to(PACKAGE).as_posix().startswith(prefix) for prefix in EXEMPT)]


def _long_functions(path: Path, where: str) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{where}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_the_scan_sees_the_package():
    # Guards the other tests against passing on an empty or wrong directory.
    names = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    assert {"spec.py", "cli/__init__.py", "manager/server.py"} <= names


def test_the_length_check_counts_decorators_out_and_nested_functions_in(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(29))
    src = tmp_path / "m.py"
    src.write_text(f"@staticmethod\ndef ok():\n{body}\n\n\nasync def long():\n{body}\n    def inner():\n"
                   f"{body.replace('    ', '        ')}\n        return 1\n")
    assert _long_functions(src, "m.py") == ["m.py:34 long (61 lines)", "m.py:64 inner (31 lines)"]


def test_no_function_is_longer_than_30_lines():
    offenders = [line for path in _modules()
                 for line in _long_functions(path, path.relative_to(PACKAGE.parent).as_posix())]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(offenders)


def test_every_module_is_under_400_lines():
    sizes = {p.relative_to(PACKAGE.parent).as_posix(): len(p.read_text().splitlines()) for p in _modules()}
    offenders = [f"{name} ({n} lines)" for name, n in sizes.items() if n >= MAX_MODULE_LINES]
    assert not offenders, f"modules of {MAX_MODULE_LINES} lines or more (split them):\n" + "\n".join(offenders)


def test_the_trainer_is_grouped_into_subpackages():
    top = sorted(p.name for p in (PACKAGE / "train").glob("*.py"))
    assert len(top) <= MAX_TRAIN_TOP_LEVEL_MODULES, (
        f"orchestrator/train/ has {len(top)} modules at its top level (at most {MAX_TRAIN_TOP_LEVEL_MODULES}; "
        f"group them into subpackages by concern): {', '.join(top)}")
