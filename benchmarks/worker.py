"""One benchmark worker process: one group's variants of one workload (:mod:`benchmarks.cases`),
driven over JSON lines (:mod:`benchmarks._protocol`).

    python -m benchmarks.worker --workload mlp --group torch [--quick] [--device] [--variants A,B]

On start it builds every variant and runs its first step (the first variant's first step is the
first step of a fresh process: imports done and, in a jax group, the backend started by one
trivial jit, then the clock covers tracing, compiling and one step), warms each with one full
sample, and says ``ready``. Each ``round`` then times one sample (``steps`` steps, waiting for
the last, after one untimed step) of every variant, in an order shuffled by the round's seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
import traceback
from typing import Any

from benchmarks import _protocol, _slow


def _timed_sample(step, n: int) -> float:
    """Seconds per step of ``n`` consecutive steps, waiting for the last result."""
    t0 = time.perf_counter()
    for _ in range(n):
        out = step()
    out.block_until_ready()
    return (time.perf_counter() - t0) / n


def _round(built: dict[str, Any], steps: int, seed: int) -> dict[str, Any]:
    """One turn: a sample of every variant, in an order shuffled by ``seed`` (the same in
    every process of the round), each sample after one untimed step of its own variant; and
    the machine's probe before and after them (:mod:`benchmarks._slow`).

    Why the untimed step: a process starts its turn cold (its threads slept and the other
    processes' turns went through the caches), and without it the turn's first variant paid
    for that — up to 1.23× its median in the later places, in the runs of 2026-12-05."""
    names = list(built)
    random.Random(seed).shuffle(names)
    seconds = {}
    probes = [_slow.probe()]
    for name in names:
        built[name]().block_until_ready()
        seconds[name] = _timed_sample(built[name], steps)
    probes.append(_slow.probe())
    return {"event": "round", "seconds": seconds, "probe": probes}


def _start_backend(group: str) -> None:
    if group != "torch":
        import jax
        import jax.numpy as jnp

        jax.block_until_ready(jax.jit(lambda a: a + 1)(jnp.ones(3)))


def _build(args: argparse.Namespace, steps: int) -> tuple[dict, dict[str, Any]]:
    from benchmarks import cases

    makers, skipped = cases.variants(args.workload, args.group, args.device, args.quick)
    if args.variants:
        makers = {k: v for k, v in makers.items() if k in args.variants.split(",")}
    _start_backend(args.group)
    built, first, flops = {}, {}, {}
    for name, make in makers.items():
        t0 = time.perf_counter()
        step = make()
        step().block_until_ready()
        first[name] = time.perf_counter() - t0
        _timed_sample(step, steps)  # warm: a full sample's worth
        built[name] = step
        if hasattr(step, "flops"):
            flops[name] = step.flops()
    if args.workload == cases.GEMM:
        flops = dict.fromkeys(built, cases.gemm_flops(cases.gemm_size(args.quick)))
    return built, {"event": "ready", "first_seconds": first, "first_fresh": next(iter(first), None),
                   "flops": flops, "skipped": skipped, "steps": steps}


def _stats() -> dict[str, Any]:
    xla = None
    if "jax" in sys.modules:
        import jax

        xla = jax.devices()[0].memory_stats()  # None on CPU
    return {"event": "stats", "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "xla_memory": xla, "modules": {m: m in sys.modules for m in ("jax", "torch")}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("--workload", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", action="store_true")
    parser.add_argument("--variants")
    args = parser.parse_args(argv)
    channel = _protocol.take_stdout()
    from benchmarks import cases

    try:
        built, ready = _build(args, cases.steps_per_sample(args.workload, args.quick))
    except Exception as e:  # noqa: BLE001 - reported to the driver in one line, then exit
        traceback.print_exc()
        _protocol.send(channel, {"event": "error", "message": f"{type(e).__name__}: {e}"[:500]})
        sys.exit(1)
    _protocol.send(channel, {**ready, "pid": os.getpid()})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "round":
            _protocol.send(channel, _round(built, ready["steps"], command["seed"]))
        elif command["cmd"] == "stats":
            _protocol.send(channel, _stats())
        elif command["cmd"] == "exit":
            break


if __name__ == "__main__":
    main()
