"""Helpers the tests import: the repository's root, fresh processes (Python, the ``luxc``
command), compiling a factory with ``luxc compile``, running one pass on StableHLO text, and a
LeNet-5 step compiled with and without one pass.

Fixtures live in ``tests/conftest.py``; a helper used by one directory only lives there
(``tests/trust/_artifacts.py``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: README.md, docs/, examples/


def run_python(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (for multi-device and fresh-process checks)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def luxc_cli(*args, cwd) -> subprocess.CompletedProcess:
    """Run the ``luxc`` command in a fresh process in directory ``cwd``."""
    return subprocess.run([sys.executable, "-m", "luxc.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def compile_factory(directory, source: str) -> None:
    """Write ``source`` (defining ``factory()``) to ``directory/model_src.py`` and compile it
    with ``luxc compile`` to ``directory/step.luxc``."""
    (directory / "model_src.py").write_text(source)
    r = luxc_cli("compile", "model_src.py:factory", "--out", "step.luxc", cwd=directory)
    assert r.returncode == 0, r.stderr


def run_pass_body(text: str, name: str) -> tuple[list[str], int]:
    """Run the pass ``name`` on StableHLO ``text``: the function body's lines (stripped, without
    the module/func wrapper) and the pass's rewrite count, for golden-text tests."""
    from jaxlib.mlir import ir

    from luxc import passes
    from luxc.runtime._jax_internal import ir_context

    with ir_context():
        module = ir.Module.parse(text)
        (record,) = passes.run_pipeline(module, [name])
        lines = [line.strip() for line in str(module).splitlines()]
        return [x for x in lines if x and not x.startswith(("module", "func.func", "}"))], record.rewrites


def dot_module(lhs: str, rhs: str, out: str, dims: str, extra: str = "") -> str:
    """StableHLO text of ``@main(%a, %b)`` returning one ``dot_general`` of the two tensor types
    ``lhs`` and ``rhs`` (``"2x16x8xbf16"``) with result type ``out``, dimension numbers ``dims``
    (``"contracting_dims = [1] x [0]"``) and ``extra`` attributes, for golden-text tests."""
    return f"""
func.func @main(%a: tensor<{lhs}>, %b: tensor<{rhs}>) -> tensor<{out}> {{
  %0 = stablehlo.dot_general %a, %b, {dims}{extra} : (tensor<{lhs}>, tensor<{rhs}>) -> tensor<{out}>
  return %0 : tensor<{out}>
}}"""


_CLI_EACH = """
import json, os, sys
from click.testing import CliRunner
from luxc.cli import main
results = []
for cwd, args in json.load(sys.stdin):
    os.chdir(cwd)
    r = CliRunner().invoke(main, args)
    escaped = r.exception is not None and not isinstance(r.exception, SystemExit)
    results.append([r.exit_code, r.stdout, r.stderr + (f"Traceback: {r.exception!r}" if escaped else "")])
print(json.dumps(results))
"""


def luxc_cli_each(cases: list[tuple[Path, list]]) -> list[subprocess.CompletedProcess]:
    """Run several ``luxc`` commands, each ``(cwd, args)``, through the command's entry point in
    ONE fresh process (one jax start instead of one per command): their exit codes and output,
    as ``luxc_cli`` gives them. An exception a command let escape shows as the traceback a user
    would see."""
    payload = json.dumps([[str(cwd), [str(a) for a in args]] for cwd, args in cases])
    r = subprocess.run([sys.executable, "-c", _CLI_EACH], input=payload, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return [subprocess.CompletedProcess(args, code, out, err)
            for (_, args), (code, out, err) in zip(cases, json.loads(r.stdout.splitlines()[-1]))]


def compile_then_run_each(work: Path, cases: dict[str, tuple[Path, list]]) -> dict:
    """``luxc compile model_src.py:factory --out step.luxc`` in ``work``, then every case's
    commands (``name: (cwd, [args, ...])``), all in ONE fresh process (``luxc_cli_each``):
    ``name: (cwd, [CompletedProcess, ...])``."""
    compile_, *results = luxc_cli_each(
        [(work, ["compile", "model_src.py:factory", "--out", "step.luxc"])] +
        [(d, args) for d, commands in cases.values() for args in commands])
    assert compile_.returncode == 0, compile_.stderr
    results = iter(results)
    return {name: (d, [next(results) for _ in commands]) for name, (d, commands) in cases.items()}
