"""The benchmark's records and what is written from them: RESULTS.md and a bar chart."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

# The variant first-call times are compared with: hand-written jax.jit (issue 24's target: luxc's
# first step within 1.2x of it).
JIT_BASELINE = "jax.jit+optax"


@dataclass(frozen=True)
class Timing:
    """Seconds per training step over the rounds (median, min, max) and the first call's wall
    time (tracing + compiling + one step)."""

    median: float
    low: float
    high: float
    first: float


@dataclass(frozen=True)
class Case:
    label: str
    title: str
    steps: int
    timings: dict[str, Timing]
    # First steps of "luxc" and "jax.jit", each sample in a fresh process (first_step.py).
    fresh_first: dict[str, list[float]] = field(default_factory=dict)

    def fresh_first_line(self) -> str | None:
        """The fresh-process first steps and their ratio, as one sentence (``None``: not run)."""
        if not self.fresh_first:
            return None
        luxc, jit = (statistics.median(self.fresh_first[k]) for k in ("luxc", "jax.jit"))
        n = len(self.fresh_first["luxc"])
        return (f"First step in a fresh process (median of {n}, the two alternating): luxc "
                f"{luxc:.2f} s, jax.jit {jit:.2f} s, **{luxc / jit:.2f}x** jax.jit's "
                f"(samples: luxc {', '.join(f'{t:.2f}' for t in self.fresh_first['luxc'])}; "
                f"jax.jit {', '.join(f'{t:.2f}' for t in self.fresh_first['jax.jit'])}).")

    def fastest(self) -> float:
        return min(t.median for t in self.timings.values())

    def first_vs_jit(self, name: str) -> str:
        """``name``'s first call as a multiple of jax.jit's, or ``-`` without a jax.jit row."""
        jit = self.timings.get(JIT_BASELINE)
        return f"{self.timings[name].first / jit.first:.2f}" if jit and jit.first > 0 else "-"


@dataclass(frozen=True)
class Run:
    """When, where and how the benchmark ran; the load average is read at start and end."""

    command: str
    rounds: int
    skipped: list[str]
    started: str
    load_start: tuple[float, ...]
    seconds: float = 0.0
    load_end: tuple[float, ...] = ()

    @classmethod
    def start(cls, command: str, rounds: int, skipped: list[str]) -> Run:
        now = dt.datetime.now(dt.UTC)
        return cls(command, rounds, skipped, now.strftime("%Y-%m-%d %H:%M UTC"), os.getloadavg())

    def finish(self) -> Run:
        began = dt.datetime.strptime(self.started, "%Y-%m-%d %H:%M UTC").replace(tzinfo=dt.UTC)
        return replace(self, seconds=(dt.datetime.now(dt.UTC) - began).total_seconds(),
                       load_end=os.getloadavg())


def _ms(t: float) -> str:
    ms = t * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def case_lines(case: Case) -> str:
    """A plain-text summary of one workload, for the terminal."""
    fast = case.fastest()
    lines = [f"\n{case.title} ({case.steps} steps per sample)"]
    for name, t in sorted(case.timings.items(), key=lambda kv: kv[1].median):
        lines.append(f"  {name:<20} {_ms(t.median):>8} ms/step  [{_ms(t.low)}-{_ms(t.high)}]  "
                     f"{t.median / fast:5.2f}x  first call {t.first:6.2f} s "
                     f"({case.first_vs_jit(name)}x jax.jit's)")
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> str:
    out = []
    for dist in ("jax", "jaxlib", "optax", "flax", "equinox", "torch"):
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(out)


def _fresh_cells(case: Case) -> list[str]:
    if not case.fresh_first:
        return ["-", "-", "-"]
    luxc, jit = (statistics.median(case.fresh_first[k]) for k in ("luxc", "jax.jit"))
    return [f"{luxc:.2f}", f"{jit:.2f}", f"{luxc / jit:.2f}"]


_FRESH_HEADS = ["luxc first step s", "jax.jit first step s", "first step luxc / jax.jit"]


def _table(cases: list[Case], names: list[str]) -> list[str]:
    rows = ["| workload | " + " | ".join(names + _FRESH_HEADS) + " |",
            "|---|" + "---:|" * (len(names) + len(_FRESH_HEADS))]
    for case in cases:
        fast = case.fastest()
        cells = []
        for name in names:
            t = case.timings.get(name)
            if t is None:
                cells.append("-")
                continue
            cell = f"{_ms(t.median)} ({t.median / fast:.2f})"
            cells.append(f"**{cell}**" if t.median == fast else cell)
        rows.append(f"| {case.title} | " + " | ".join(cells + _fresh_cells(case)) + " |")
    return rows


def _detail(case: Case) -> list[str]:
    fast = case.fastest()
    rows = [f"\n### {case.title}\n", "| variant | median ms/step | min-max | ratio | first call s "
            "| first call / jax.jit's |", "|---|---:|---:|---:|---:|---:|"]
    for name, t in sorted(case.timings.items(), key=lambda kv: kv[1].median):
        rows.append(f"| {name} | {_ms(t.median)} | {_ms(t.low)}-{_ms(t.high)} | "
                    f"{t.median / fast:.2f} | {t.first:.2f} | {case.first_vs_jit(name)} |")
    if case.fresh_first:
        rows += ["", case.fresh_first_line()]
    return rows


def chart(cases: list[Case], names: list[str], path: Path) -> None:
    """Grouped bars: each variant's time per step as a multiple of the fastest (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=110)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs, ratios = [], []
        for j, case in enumerate(cases):
            if name in case.timings:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ratios.append(case.timings[name].median / case.fastest())
        bars = ax.bar(xs, ratios, width, label=name)
        for bar, r in zip(bars, ratios):
            ax.annotate(f"{r:.2f}", (bar.get_x() + bar.get_width() / 2, r), ha="center",
                        va="bottom", fontsize=6, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_yscale("log")
    top = max(t.median / c.fastest() for c in cases for t in c.timings.values())
    ax.set_ylim(0.8, top * 3)
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(cases)), [c.label for c in cases], fontsize=8)
    ax.set_ylabel("time per step / fastest (log; lower is better)")
    ax.set_title("One training step (fwd + bwd + Adam), median of interleaved rounds")
    ax.legend(fontsize=7, ncol=len(names), loc="upper center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(run: Run, cases: list[Case], out_dir: str, several: list[Case] = ()) -> Path:
    """Write ``RESULTS.md`` and ``results.png`` (if matplotlib is installed) into ``out_dir``;
    ``several`` (``train_steps_`` beside one step a call) get a section of their own."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(n for c in cases for n in c.timings))
    load = ", ".join(f"{a:.1f}" for a in run.load_start)
    # Sections other runs write (``--only gpt``, ``--only depth``) stay as they are.
    old = (out / "RESULTS.md").read_text() if (out / "RESULTS.md").exists() else ""
    kept = [section for section in old.split("\n## ")[1:] if section.startswith(_OTHER_SECTIONS)]
    lines = [
        "# Benchmark results", "",
        f"`{run.command}` on {dt.datetime.now(dt.UTC):%Y-%m-%d}, started {run.started}, "
        f"{run.seconds / 60:.0f} min; {os.cpu_count()} cores ({_cpu()}); {_versions()}.", "",
        f"Load average (1, 5, 15 min) at the start {load}, at the end "
        f"{', '.join(f'{a:.1f}' for a in run.load_end)}: other processes shared the cores, so "
        "compare only numbers from this one run.", "",
        f"Median ms per training step (forward + loss + backward + Adam) over {run.rounds} "
        "interleaved rounds, and in brackets the ratio to the fastest variant (bold).", "",
        *_table(cases, names), "",
    ]
    if run.skipped:
        lines += [f"Not installed, so skipped: {', '.join(run.skipped)}.", ""]
    try:
        chart(cases, names, out / "results.png")
        lines += ["![time per step relative to the fastest](results.png)", ""]
    except ImportError:
        lines += ["(matplotlib is not installed: no chart.)", ""]
    lines += ["## Per workload", "",
              "min-max is over the rounds; *first call* is the wall time of the first step "
              "(tracing, compiling and one step; torch eager has nothing to compile) in the "
              "benchmark's own process, after the variants before it; the *first step in a fresh "
              "process* (also in the main table) is the fair compile-time comparison "
              "(benchmarks/first_step.py)."]
    for case in cases:
        lines += _detail(case)
    if several:
        lines += ["", "## Several steps per call", "",
                  "`train_steps_` runs 8 steps (a `lax.scan` over 8 batches) in one compiled call; "
                  "its time is per training step, in the same interleaved rounds as one step a "
                  "call (its *first call* compiles and runs 8 steps)."]
        for case in several:
            lines += _detail(case)
    lines += [f"\n## {section.rstrip()}" for section in kept]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


TOKENS_HEADING = "## Language model: tokens per second"
_OTHER_SECTIONS = (TOKENS_HEADING[3:], "Depth")


def write_tokens_section(run: Run, case: Case, out_dir: str, tokens: int) -> Path:
    """Put ``case`` (a language model, ``tokens`` tokens a step) in its own section of
    ``RESULTS.md``, replacing that section from an earlier run and keeping everything else."""
    path = Path(out_dir) / "RESULTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    before, _, rest = old.partition(TOKENS_HEADING)
    after = rest[rest.find("\n## "):] if "\n## " in rest else ""
    fast = case.fastest()
    lines = [
        TOKENS_HEADING, "",
        f"{case.title}: `{run.command}`, started {run.started}, {run.seconds / 60:.0f} min, "
        f"{run.rounds} interleaved rounds of {case.steps} steps; load average at the start "
        f"{', '.join(f'{a:.1f}' for a in run.load_start)}, at the end "
        f"{', '.join(f'{a:.1f}' for a in run.load_end)}; {_versions()}.", "",
        "| variant | tokens/s | median ms/step | min-max | ratio | first call s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in sorted(case.timings.items(), key=lambda kv: kv[1].median):
        lines.append(f"| {name} | {tokens / t.median:,.0f} | {_ms(t.median)} | {_ms(t.low)}-"
                     f"{_ms(t.high)} | {t.median / fast:.2f} | {t.first:.2f} |")
    if case.fresh_first:
        lines += ["", case.fresh_first_line()]
    if run.skipped:
        lines += ["", f"Not installed, so skipped: {', '.join(run.skipped)}."]
    path.write_text(before.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n" + after)
    return path
