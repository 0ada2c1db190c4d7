"""``python -m benchmarks``: luxc against its peers, every framework in a process of its own.

    python -m benchmarks                        # the full protocol; writes results.json + RESULTS.md
    python -m benchmarks --quick --allow-busy   # a smoke test: 1 round, tiny samples, depth 1
    python -m benchmarks --only transformer,gpt,depth-12 --rounds 9
    python -m benchmarks --device               # the same on the accelerator jax sees

The protocol (benchmarks/README.md says why each rule is there). For each workload,
``--processes`` worker processes per group (luxc; jax.jit/flax/equinox; torch eager and
``torch.compile``; the GEMM peak) are started and waited for (each one's ``ready`` line, after
it compiled and warmed every variant), one after the other. Then in every round each process
takes a turn, the processes in an order shuffled by the round, and times one sample of each of
its variants (order shuffled too); a group's figure for the round is the median over its
processes. At
the start of every turn the driver records the load (:mod:`benchmarks._load`). torch runs with
its default threads and OpenMP policy and never shares a process with jax. Ratios are medians
over rounds of each round's ratio. A run whose load exceeded ``--max-load`` refuses to write its
results (exit status 3) unless ``--allow-busy``, which writes them with every figure marked busy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _protocol, _slow, cases, report
from benchmarks._load import Load, LoadMeter

ROOT = str(Path(__file__).resolve().parent.parent)
BUSY_STATUS = 3
# glibc keeps freed memory in the process (luxc.retain_host_memory's settings, as environment
# variables so that every process, torch's included, gets the same).
_RETAIN = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
           "MALLOC_TOP_PAD_": str(128 * 2**20)}


def _env(group: str, args: argparse.Namespace) -> dict[str, str]:
    """A worker's environment: the user's, less what would change a framework's defaults."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "LUXC_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    if group == "peak":
        env.pop("OPENBLAS_CORETYPE", None)  # numpy's OpenBLAS at the machine's real speed
    if not args.device:
        env["JAX_PLATFORMS"] = "cpu"
    if args.retain_host_memory:
        env.update(_RETAIN)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def _start(key: str, group: str, args: argparse.Namespace) -> _protocol.Worker:
    argv = ["--workload", key, "--group", group]
    argv += ["--quick"] * args.quick + ["--device"] * args.device
    argv += ["--variants", args.variants] if args.variants else []
    worker = _protocol.Worker(f"{group} ({key})", argv, _env(group, args), ROOT)
    for line in worker.ready["skipped"]:
        print(f"  skipped {line}", flush=True)
    firsts = ", ".join(f"{n} {s:.2f}s" for n, s in worker.ready["first_seconds"].items())
    print(f"  {group}: pid {worker.pid} ready; first steps {firsts}", flush=True)
    return worker


def _start_all(workers: dict[tuple[str, int], _protocol.Worker], key: str,
               groups: tuple[str, ...], args: argparse.Namespace) -> None:
    """Start ``args.processes`` workers of each group in turn (into ``workers``, keyed by group
    and index); a peer group that cannot run here is skipped with one line."""
    for group in groups:
        missing = cases.missing_module(group)
        if missing:
            print(f"  skipped the {group} rows: {missing} is not installed "
                  f"(pip install -e '.[bench]')", flush=True)
            continue
        try:
            for i in range(args.processes):
                workers[group, i] = _start(key, group, args)
        except _protocol.WorkerError as e:
            if group not in cases.PEERS:
                raise
            # A peer that cannot run here (no CUDA build of torch under --device, …).
            for i in [i for g, i in workers if g == group]:
                workers.pop((group, i)).close()
            print(f"  skipped the {group} rows: {e}", flush=True)


def _group_stats(workers: list[_protocol.Worker]) -> dict[str, Any]:
    """A group's statistics: its first process's (the one that compiled without a warm cache),
    with every process's pid and the largest peak RSS among them."""
    each = [{**w.ready, **w.ask({"cmd": "stats"}, "stats"), "pid": w.pid} for w in workers]
    for stats in each:
        del stats["event"]
    return {**each[0], "pids": [s["pid"] for s in each],
            "peak_rss_bytes": max(s["peak_rss_bytes"] for s in each)}


def _turn(worker: _protocol.Worker, r: int, meter: LoadMeter,
          stretches: _slow.SlowStretches) -> dict[str, Any]:
    """One process's turn of round ``r``, taken again while the machine's probe says it fell in
    a slow stretch (:mod:`benchmarks._slow`); what the row records of the turn kept."""
    retakes = 0
    while True:
        load = meter.mark()
        reply = worker.ask({"cmd": "round", "seed": r}, "round")
        slowness = stretches.slowness(reply["probe"])
        if not _slow.take_again(slowness, retakes):
            return {"load1": load.load1, "others": load.others, "seconds": reply["seconds"],
                    "slowness": round(slowness, 3), "retakes": retakes}
        retakes += 1
        print(f"  {worker.name} round {r}: the probe took {slowness:.2f}x its fastest; "
              "taking the turn again", flush=True)


def measure_workload(key: str, groups: tuple[str, ...], args: argparse.Namespace,
                     meter: LoadMeter, stretches: _slow.SlowStretches) -> dict[str, Any]:
    """Start ``groups``' workers for ``key``, run the rounds, collect their statistics."""
    print(f"\n{cases.title(key, args.quick)}", flush=True)
    workers: dict[tuple[str, int], _protocol.Worker] = {}
    rows: list[dict[str, Any]] = []
    try:
        _start_all(workers, key, groups, args)
        for r in range(args.rounds):
            order = list(workers)
            random.Random(f"{key}:{r}").shuffle(order)
            for group, i in order:
                rows.append({"round": r, "group": group, "process": i,
                             **_turn(workers[group, i], r, meter, stretches)})
        names = dict.fromkeys(g for g, _ in workers)
        stats = {g: _group_stats([w for (h, _), w in workers.items() if h == g]) for g in names}
    finally:
        for worker in workers.values():
            worker.close()
    return {"key": key, "title": cases.title(key, args.quick), "rows": rows, "processes": stats}


def kept_per_cpu(args: argparse.Namespace, reasons: list[str]) -> bool:
    """Whether a run is its CPU's record in ``runs/``: a full run (every workload and variant,
    not ``--quick``, on the CPU) that was not busy."""
    return not (reasons or args.quick or args.only or args.variants or args.device)


def busy_reasons(start: Load, workloads: list[dict[str, Any]], max_load: float) -> list[str]:
    """Why the run counts as busy (empty: it does not): the load average at its start, and
    the worst load of any turn (other processes' cores where known, else the load average)."""
    reasons = []
    if start.load1 > max_load:
        reasons.append(f"the 1-minute load average was {start.load1:.2f} at the start")
    turns = [(Load(row["load1"], row["others"]).worst(), w["key"], row)
             for w in workloads for row in w["rows"]]
    if turns:
        worst, key, row = max(turns, key=lambda t: t[0])
        if worst > max_load:
            what = ("other processes used {:.2f} cores" if row["others"] is not None
                    else "the 1-minute load average was {:.2f}").format(worst)
            reasons.append(f"{what} before {key}'s round {row['round']} ({row['group']})")
    return reasons


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("luxc", "jax", "jaxlib", "optax", "flax", "equinox", "torch", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerator() -> str | None:
    """The platform of the accelerator jax sees (asked in a process of its own), or ``None``."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    r = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                       capture_output=True, text=True, env=env, timeout=300)
    backend = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else "cpu"
    return None if backend == "cpu" else backend


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: 1 round, short samples, a 512 GEMM, depth 1 only")
    p.add_argument("--rounds", type=int, help="rounds (default 7; 1 with --quick)")
    p.add_argument("--processes", type=int, default=None,
                   help="worker processes per framework, each timed in every round (default 3; "
                        "1 with --quick): the same code can be faster in one process than in "
                        "another, so one process per framework measures its luck")
    p.add_argument("--only", help="comma-separated workloads (default all): "
                   + ", ".join(cases.workload_keys()))
    p.add_argument("--depths", help="block counts of the depth workloads (default 1,12,24)")
    p.add_argument("--variants", help="comma-separated variant names to keep (default all)")
    p.add_argument("--out", default=str(Path(ROOT, "benchmarks")),
                   help="directory for results.json and RESULTS.md (default benchmarks/)")
    p.add_argument("--max-load", type=float, default=0.7,
                   help="the busiest load a run may see and still write its results (default "
                        "0.7: the 1-minute load average at the start, then the cores other "
                        "processes used in any turn)")
    p.add_argument("--allow-busy", action="store_true",
                   help="write the results of a busy run anyway, every figure marked busy")
    p.add_argument("--device", action="store_true",
                   help="measure on the accelerator jax sees (torch on CUDA) instead of the CPU")
    p.add_argument("--retain-host-memory", action="store_true",
                   help="every worker keeps freed memory (glibc malloc settings; README 'Host memory')")
    return p


def _selected(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    depths = (tuple(int(d) for d in args.depths.split(",")) if args.depths
              else (1,) if args.quick else cases.DEPTHS)
    keys = cases.workload_keys(depths)
    if not args.only:
        return keys
    chosen = args.only.split(",")
    unknown = [k for k in chosen if k not in keys and not k.startswith("depth-")]
    if unknown:
        parser.error(f"--only: no workload named {', '.join(unknown)}; choose from {', '.join(keys)}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 7)
    args.processes = args.processes or (1 if args.quick else 3)
    if args.device:
        found = accelerator()
        if found is None:
            print("python -m benchmarks --device: jax sees no accelerator on this machine (only "
                  "the CPU); nothing measured (run it without --device)", file=sys.stderr)
            sys.exit(1)
        print(f"measuring on {found}")
    keys = _selected(args, parser)
    start = Load(os.getloadavg()[0], None)
    began, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    meter, stretches = LoadMeter(), _slow.SlowStretches()
    try:
        workloads = [measure_workload(k, cases.groups_of(k), args, meter, stretches) for k in keys]
    except _protocol.WorkerError as e:
        sys.exit(f"python -m benchmarks: {e}")
    reasons = busy_reasons(start, workloads, args.max_load)
    results = {"run": {
        "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]),
        "started": began.strftime("%Y-%m-%d %H:%M UTC"), "seconds": time.monotonic() - t0,
        "cores": os.cpu_count(), "cpu": _cpu(), "versions": _versions(), "rounds": args.rounds,
        "processes": args.processes,
        "quick": args.quick, "device": args.device, "start_load1": start.load1,
        "max_load": args.max_load, "busy": reasons, "allow_busy": args.allow_busy},
        "workloads": workloads}
    out = Path(args.out)
    text = report.render(results, report.other_cpus(out, results))
    print("\n" + text)
    if reasons and not args.allow_busy:
        print(f"refused to write {args.out}/results.json and RESULTS.md: the machine was busy "
              f"({'; '.join(reasons)}; --max-load {args.max_load}); rerun on an idle machine, or "
              f"pass --allow-busy to write figures marked busy", file=sys.stderr)
        sys.exit(BUSY_STATUS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if kept_per_cpu(args, reasons):
        record = report.cpu_record(out, results["run"]["cpu"])
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps(results, indent=1) + "\n")
    (out / "RESULTS.md").write_text(text)
    print(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'}"
          + (" (every figure marked busy)" if reasons else ""))


if __name__ == "__main__":
    main()
