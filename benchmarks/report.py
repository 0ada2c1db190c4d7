"""Every published benchmark figure is generated here from ``results.json`` (what
``python -m benchmarks`` measured), never typed by hand.

    python -m benchmarks.report                  # regenerate benchmarks/RESULTS.md
    python -m benchmarks.report --readme-table   # print the README's table block

The same code is faster or slower against its peers on another CPU: the f32 transformer block and
GPT were well behind torch.compile on a 2-core Intel Xeon and about even on a 2-core AMD EPYC a
day later, the only change to those steps in between being which small scan buffers are kept.
So a full run the protocol accepted is also kept as ``runs/<cpu>.json``, the last one per CPU
model, and RESULTS.md ends with luxc's ratio to its fastest peer on every CPU kept there.

Per variant: the median seconds per step over rounds (a round's figure is the median over its
group's processes), min-max, how much slower its slowest process was than its fastest, and the
median over rounds of that round's ratio to the fastest variant; for luxc's variants also the
median per-round ratio to the fastest peer of the same precision (f32 or bf16). A busy run
(``--allow-busy``) has every figure marked busy.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import _slow

_DEFAULT = Path(__file__).resolve().parent / "results.json"


def _precision(name: str) -> str:
    return "bf16" if "bf16" in name else "f32"


def _samples(work: dict[str, Any]) -> tuple[dict[str, dict[int, float]], dict[str, str],
                                            dict[str, float | None]]:
    """Seconds per step by variant and round (the median over the group's processes), each
    variant's group, and its process spread: the slowest process's median over the fastest's
    (``None`` with one process)."""
    each, group = {}, {}
    for row in work["rows"]:
        for name, s in row["seconds"].items():
            each.setdefault(name, {}).setdefault(row["round"], {})[row.get("process", 0)] = s
            group[name] = row["group"]
    by = {name: {r: statistics.median(p.values()) for r, p in rounds.items()}
          for name, rounds in each.items()}
    spread = {}
    for name, rounds in each.items():
        processes = {i for p in rounds.values() for i in p}
        medians = [statistics.median(p[i] for p in rounds.values() if i in p) for i in processes]
        spread[name] = max(medians) / min(medians) if len(medians) > 1 else None
    return by, group, spread


def _median_ratio(mine: dict[int, float], others: list[dict[int, float]]) -> float | None:
    ratios = []
    for r, t in mine.items():
        best = [o[r] for o in others if r in o]
        if best:
            ratios.append(t / min(best))
    return statistics.median(ratios) if ratios else None


def summary(work: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per variant, fastest first (see the module docstring for the figures)."""
    by, group, spread = _samples(work)
    out = []
    for name, rounds in by.items():
        proc = work["processes"].get(group[name], {})
        peers = [by[o] for o in by if group[o] in ("jax", "torch") and _precision(o) == _precision(name)]
        t = statistics.median(rounds.values())
        flops = proc.get("flops", {}).get(name)
        out.append({
            "variant": name, "group": group[name], "median": t, "low": min(rounds.values()),
            "high": max(rounds.values()), "ratio": _median_ratio(rounds, list(by.values())),
            "vs_peer": _median_ratio(rounds, peers) if group[name] == "luxc" else None,
            "first": proc.get("first_seconds", {}).get(name),
            "fresh": proc.get("first_fresh") == name, "rss": proc.get("peak_rss_bytes"),
            "spread": spread[name],
            "gflops": flops / t / 1e9 if flops else None})
    return sorted(out, key=lambda v: v["median"])


def _ms(t: float) -> str:
    ms = t * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def loads_line(work: dict[str, Any]) -> str:
    rows = work["rows"]
    if not rows:
        return "no rounds"
    others = [r["others"] for r in rows if r["others"] is not None]
    loads = [r["load1"] for r in rows]
    text = f"load average at turn starts {min(loads):.2f}-{max(loads):.2f}"
    text += f"; other processes' cores per turn at most {max(others):.2f}" if others else ""
    return text + slow_stretches(rows)


def slow_stretches(rows: list[dict[str, Any]]) -> str:
    """What the probe said of the turns (benchmarks/_slow.py); rows of older runs have none."""
    probed = [r for r in rows if "slowness" in r]
    if not probed:
        return ""
    retaken = sum(r["retakes"] for r in probed)
    slow = [r["slowness"] for r in probed if r["slowness"] > _slow.SLOW]
    text = f"; turns taken again in a slow stretch: {retaken}" if retaken else ""
    if slow:
        text += (f"; turns still slow after {_slow.MAX_RETAKES} retakes: {len(slow)} "
                 f"(probe up to {max(slow):.2f}x its fastest)")
    return text


def variant_table(work: dict[str, Any], busy: str) -> list[str]:
    lines = ["| variant | processes | median ms/step | min-max | slowest ÷ fastest process | "
             "× fastest | luxc ÷ best peer | first step s | peak RSS MiB | GFLOP/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    blocks = int(work["key"][6:]) if work["key"].startswith("depth-") else None
    for v in summary(work):
        cells = [f"{_ms(v['median'])}" + (f" ({_ms(v['median'] / blocks)}/block)" if blocks else ""),
                 f"{_ms(v['low'])}-{_ms(v['high'])}",
                 "-" if v["spread"] is None else f"{v['spread']:.2f}", f"{v['ratio']:.2f}",
                 "-" if v["vs_peer"] is None else f"{v['vs_peer']:.2f}",
                 "-" if v["first"] is None else f"{v['first']:.2f}" + (" (fresh)" if v["fresh"] else ""),
                 "-" if v["rss"] is None else f"{v['rss'] / 2**20:.0f}",
                 "-" if v["gflops"] is None else f"{v['gflops']:.1f}"]
        proc = work["processes"].get(v["group"], {})
        pids = ", ".join(str(p) for p in proc.get("pids", [proc.get("pid", "?")]))
        lines.append(f"| {v['variant']} | {v['group']} {pids} | "
                     + " | ".join(c + busy if c != "-" else c for c in cells) + " |")
    return lines


def peak(results: dict[str, Any]) -> float | None:
    """The machine's f32 ceiling in GFLOP/s: the fastest GEMM of the run (``None``: not run)."""
    gemm = next((w for w in results["workloads"] if w["key"] == "gemm"), None)
    rates = [v["gflops"] for v in summary(gemm) if v["gflops"]] if gemm else []
    return max(rates) if rates else None


def _peak_line(results: dict[str, Any], busy: str) -> list[str]:
    top = peak(results)
    block = next((w for w in results["workloads"] if w["key"] == "transformer"), None)
    luxc = next((v for v in summary(block) if v["variant"] == "luxc"), None) if block else None
    if top is None or luxc is None or not luxc["gflops"]:
        return []
    return [f"The machine's float32 ceiling in this run (the fastest GEMM): {top:.0f} GFLOP/s{busy}; "
            f"luxc on the transformer block: {luxc['gflops']:.0f} GFLOP/s{busy}, "
            f"{luxc['gflops'] / top:.0%}{busy} of it.", ""]


def cpu_record(directory: Path, cpu: str) -> Path:
    """Where the last accepted full run on ``cpu`` is kept: ``directory/runs/<slug>.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "unknown-cpu"
    return directory / "runs" / f"{slug}.json"


def other_cpus(directory: Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The kept runs (``directory/runs/*.json``) of CPUs other than ``results``'s, by name."""
    found = []
    for path in sorted((directory / "runs").glob("*.json")):
        other = json.loads(path.read_text())
        if other["run"]["cpu"] != results["run"]["cpu"]:
            found.append(other)
    return found


def _ratios(results: dict[str, Any]) -> dict[str, float]:
    return {f"{work['title']}: {v['variant']}": v["vs_peer"] for work in results["workloads"]
            for v in summary(work) if v["vs_peer"] is not None}


def cpu_table(results: dict[str, Any], others: list[dict[str, Any]]) -> list[str]:
    """luxc ÷ its fastest peer, this run beside the last accepted run of every other CPU."""
    if not others:
        return []
    runs = [results, *others]
    columns = [_ratios(r) for r in runs]
    head = [f"{r['run']['cpu']}, {r['run']['started'][:10]}" for r in runs]
    lines = ["## luxc ÷ its fastest peer on each CPU", "",
             "This run's column first, then the last full run the protocol accepted on each "
             "other CPU (`benchmarks/runs/`); each from its own results, with that run's code.", "",
             "| workload: variant | " + " | ".join(head) + " |",
             "|---|" + "---:|" * len(runs)]
    for name in dict.fromkeys(k for c in columns for k in c):
        cells = [f"{c[name]:.2f}" if name in c else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def render(results: dict[str, Any], others: list[dict[str, Any]] = ()) -> str:
    """RESULTS.md (``others``: the kept runs of other CPUs, see :func:`cpu_table`)."""
    run = results["run"]
    busy = " (busy)" if run["busy"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items())
    lines = ["# Benchmark results", "", f"`{run['command']}`, started {run['started']}, "
             f"{run['seconds'] / 60:.0f} min, rounds: {run['rounds']}; {run['cores']} cores "
             f"({run['cpu']}); {versions}.", "",
             f"1-minute load average at the start: {run['start_load1']:.2f}; threshold "
             f"{run['max_load']}.", ""]
    if run["busy"]:
        lines += [f"**BUSY RUN: every figure is marked (busy) and proves nothing** "
                  f"({'; '.join(run['busy'])}).", ""]
    lines += ["Every framework ran in its own process; ratios are medians over rounds of each "
              "round's ratio (benchmarks/README.md, *Protocol*). *first step* is trace + "
              "compile + one step; *(fresh)* marks the first variant of a fresh process.", ""]
    lines += _peak_line(results, busy)
    for work in results["workloads"]:
        lines += [f"## {work['title']}", "", loads_line(work) + ".", "", *variant_table(work, busy), ""]
    return "\n".join(lines + cpu_table(results, list(others)))


def readme_table(results: dict[str, Any]) -> str:
    """The README's table: per workload, luxc's default variant against the fastest peer of
    its precision (median of per-round ratios)."""
    busy = " (busy)" if results["run"]["busy"] else ""
    lines = ["| workload | luxc ms/step | fastest peer | peer ms/step | luxc ÷ peer |",
             "|---|---:|---|---:|---:|"]
    for work in results["workloads"]:
        rows = summary(work)
        for v in (r for r in rows if r["group"] == "luxc" and r["vs_peer"] is not None
                  and "autotune" not in r["variant"]):
            peer = min((r for r in rows if r["group"] in ("jax", "torch")
                        and _precision(r["variant"]) == _precision(v["variant"])),
                       key=lambda r: r["median"])
            lines.append(f"| {work['title']}: {v['variant']} | {_ms(v['median'])}{busy} | "
                         f"{peer['variant']} | {_ms(peer['median'])}{busy} | "
                         f"{v['vs_peer']:.2f}{busy} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report")
    parser.add_argument("--results", default=str(_DEFAULT), help="results.json to read")
    parser.add_argument("--readme-table", action="store_true", help="print the README table")
    args = parser.parse_args(argv)
    path = Path(args.results)
    if not path.is_file():
        sys.exit(f"python -m benchmarks.report: {path} does not exist; run `python -m benchmarks` "
                 f"on an idle machine first")
    results = json.loads(path.read_text())
    if args.readme_table:
        print(readme_table(results))
        return
    (path.parent / "RESULTS.md").write_text(render(results, other_cpus(path.parent, results)))
    print(f"wrote {path.parent / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
