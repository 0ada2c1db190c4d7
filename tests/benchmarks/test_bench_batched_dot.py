"""benchmarks/bench_batched_dot.py: the check of whether XLA:CPU spreads a batched product over
the cores times each case in a fresh process, once on every core and once pinned to one."""

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks import bench_batched_dot

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_process_runs_on_one_core_and_the_other_on_all():
    case = bench_batched_dot.QUICK_CASES[0]
    pinned, free = (bench_batched_dot.timed(case, one_core, rounds=1) for one_core in (True, False))
    assert pinned["cores"] == 1
    assert free["cores"] == len(os.sched_getaffinity(0))
    assert pinned["seconds"] > 0 and free["seconds"] > 0


def test_quick_prints_one_row_of_figures_per_case():
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_batched_dot", "--quick"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "GFLOP" not in line]
    assert len(rows) == len(bench_batched_dot.QUICK_CASES)
    for row, case in zip(rows, bench_batched_dot.QUICK_CASES):
        assert row.startswith(f"| {case[0]} |")
        assert re.fullmatch(r"\| .+ \| \d+ \| \d+ \| \d+\.\d\d \|", row), row
