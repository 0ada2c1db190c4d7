"""Every Python block of the README and of docs/ runs, and a block that prints shows its output.

A page's Python blocks run in order in one fresh process (one namespace, like a notebook), in
an empty temporary directory, with the repository on the import path (``examples.digits``
imports). A ```` ```text ```` block right after a Python block is what that block prints,
compared as a doctest compares (``...`` matches anything, white space is folded); a Python
block that prints with no such block after it fails: the page would show code without what it
prints. A page that contains ``<!-- docs-test: shell -->`` also runs its ```` ```bash ````
blocks, in page order, in the same directory (its Python blocks may read what they wrote);
``examples/`` is there, as in the repository.

Each page's process is forked from one runner that imported jax, numpy, optax and luxc before
any page ran (what nearly every page imports; importing them starts no thread and no device),
so the pages do not pay for that import one by one.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.docs._examples import output_matches
from tests.support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)

_RUNNER = r"""
import contextlib, io, json, os, subprocess, sys, traceback
import jax, jax.numpy, numpy, optax, luxc

def run(blocks):
    namespace = {"__name__": "__main__"}
    for block in blocks:
        if block["lang"] == "bash":
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]],
                               capture_output=True, text=True)
            print(json.dumps({"line": block["line"], "ok": r.returncode == 0,
                              "out": r.stdout + r.stderr}), flush=True)
            if r.returncode:
                break
            continue
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block["code"], f"{block['page']}:{block['line']}", "exec"), namespace)
            print(json.dumps({"line": block["line"], "ok": True, "out": out.getvalue()}), flush=True)
        except BaseException:
            print(json.dumps({"line": block["line"], "ok": False,
                              "out": out.getvalue() + traceback.format_exc()}), flush=True)
            break

for request in sys.stdin:  # one page per line: its directory and its blocks
    page = json.loads(request)
    if os.fork() == 0:
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the page reads no request
            sys.stdin = open(os.devnull)
            os.chdir(page["cwd"])
            run(page["blocks"])
        finally:
            sys.stdout.flush()
            os._exit(0)
    _, status = os.wait()
    print(json.dumps({"page done": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class PageRunner:
    """The runner process; ``run(blocks, cwd)`` runs one page in a process forked from it and
    returns what each block did, as JSON records."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.log = log
        with open(log, "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-c", _RUNNER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=stderr, text=True,
                                         env=env, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout],
                         daemon=True).start()

    def run(self, blocks: list[dict], cwd: Path, timeout: float = 900) -> list[dict]:
        self.proc.stdin.write(json.dumps({"cwd": str(cwd), "blocks": blocks}) + "\n")
        self.proc.stdin.flush()
        results, deadline = [], time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the runner and the page it runs
                raise TimeoutError(f"the page ran over {timeout} s") from None
            if line.startswith("{"):
                record = json.loads(line)
                if "page done" in record:  # with the page process's exit code
                    return results or [{"line": "?", "ok": False, "out": (
                        f"no block reported; exit code {record['page done']}\n{self.stderr()}")}]
                results.append(record)

    def stderr(self) -> str:
        return self.log.read_text()[-4000:]

    def close(self) -> None:
        self.proc.stdin.close()  # no more pages: the runner's loop ends
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def page_runner(tmp_path_factory):
    runner = PageRunner(tmp_path_factory.mktemp("runner") / "stderr.txt")
    yield runner
    runner.close()


def blocks_of(page: Path) -> list[dict]:
    """The page's fenced blocks to run: each Python block (with the text block that follows
    it, if any) and, on a shell page, each bash block; with their line numbers."""
    text = page.read_text()
    shell = "<!-- docs-test: shell -->" in text
    fences = [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1, m.start(), m.end())
              for m in FENCE.finditer(text)]
    out = []
    for i, (lang, code, line, _, end) in enumerate(fences):
        if lang == "python":
            nxt = fences[i + 1] if i + 1 < len(fences) else None
            adjacent = nxt is not None and not text[end:nxt[3]].strip()
            expected = nxt[1] if adjacent and nxt[0] == "text" else None
            out.append({"lang": lang, "code": code, "line": line, "expected": expected,
                        "page": page.name})
        elif lang == "bash" and shell:
            out.append({"lang": lang, "code": code, "line": line, "expected": None,
                        "page": page.name})
    return out


def _pages_with_blocks() -> list[Path]:
    return [p for p in PAGES if blocks_of(p)]


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with_blocks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_blocks_run_and_show_their_output(page, tmp_path, page_runner):
    blocks = blocks_of(page)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the commands run from the repository
    results = page_runner.run(blocks, tmp_path)
    where = str(page.relative_to(ROOT))
    assert len(results) == len(blocks) and all(x["ok"] for x in results), (
        f"{where}: the block at line {results[-1]['line']} failed:\n{results[-1]['out']}")
    for block, result in zip(blocks, results):
        if block["lang"] != "python":
            continue
        if block["expected"] is None:
            assert not result["out"].strip(), (
                f"{where}:{block['line']} prints but the page does not show it; add a ```text "
                f"block after it with:\n{result['out']}")
        else:
            assert output_matches(block["expected"], result["out"]), (
                f"{where}:{block['line']} printed\n{result['out']}\nbut the page shows\n"
                f"{block['expected']}")


def test_the_block_parser_pairs_code_with_its_output(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("x\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n```bash\nls\n```\n"
                    "\n```python\npass\n```\ntext between\n```text\nnot output\n```\n")
    blocks = blocks_of(page)
    assert [(b["lang"], b["line"], b["expected"]) for b in blocks] == [
        ("python", 3, "1\n"), ("python", 15, None)]
    page.write_text("<!-- docs-test: shell -->\n```bash\nls\n```\n")
    assert [b["lang"] for b in blocks_of(page)] == ["bash"]
