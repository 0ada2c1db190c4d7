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


# Moved and split by the `rooms` branch (runtime/ into subpackages, issue 32); nothing else.
_LONG_UNTIL_SPLIT = {"runtime/artifact.py:save", "runtime/artifact.py:load"}


def test_no_function_in_the_package_is_longer_than_60_lines():
    import ast

    long = []
    for top in ("luxc", "runtime", "passes"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    where = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                    if lines > 60 and where not in _LONG_UNTIL_SPLIT:
                        long.append(f"{where} ({lines} lines, line {node.lineno})")
    assert not long, "split these functions: " + ", ".join(long)
