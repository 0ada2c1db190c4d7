"""The code base is ruff-clean (pyflakes, isort, pyupgrade, bugbear, line length)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by the test extra")
def test_ruff_is_clean():
    r = subprocess.run(["ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_function_in_the_package_is_longer_than_60_lines():
    import ast

    long = []
    for top in ("luxc", "runtime", "passes"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    where = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                    if lines > 60:
                        long.append(f"{where} ({lines} lines, line {node.lineno})")
    assert not long, "split these functions: " + ", ".join(long)


def test_no_module_in_the_package_is_longer_than_400_lines():
    """One concept a module: past 400 lines a module holds two (issue 32: "no module > 400 lines")."""
    long = [f"{p.relative_to(ROOT).as_posix()} ({n} lines)"
            for top in ("luxc", "runtime", "passes") for p in sorted((ROOT / top).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "split these modules: " + ", ".join(long)
