"""One benchmark worker process: one group's variants of one workload (:mod:`benchmarks.cases`),
driven over JSON lines (:mod:`benchmarks._protocol`).

    python -m benchmarks.worker --workload mlp --group torch [--quick] [--device] [--variants A,B]

On start it builds every variant and runs its first step (the first variant's first step is the
first step of a fresh process: imports done and, in a jax group, the backend started by one
trivial jit, then the clock covers tracing, compiling and one step), warms each with one full
sample, and says ``ready``. Each ``round`` then times a sample (``steps`` steps, waiting for
the last, after one untimed step) of every variant, in an order shuffled by the round's seed —
several samples of a short one, its figure their median (:func:`samples_per_turn`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
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


def _round(built: dict[str, Any], steps: int, seed: int,
           samples: dict[str, int] | None = None) -> dict[str, Any]:
    """One turn: ``samples[name]`` samples (default one) of every variant, in an order shuffled
    by ``seed`` (the same in every process of the round), the variants taking turns sample by
    sample, each variant's first sample after one untimed step of its own; its figure is the
    median of its samples. And the machine's probe before and after them
    (:mod:`benchmarks._slow`).

    Why the untimed step: a process starts its turn cold (its threads slept and the other
    processes' turns went through the caches), and without it the turn's first variant paid
    for that — up to 1.23× its median in the later places, in the runs of 2026-12-05. Why
    several samples of a short one: see :func:`samples_per_turn`."""
    names = list(built)
    random.Random(seed).shuffle(names)
    counts = {n: (samples or {}).get(n, 1) for n in names}
    taken: dict[str, list[float]] = {n: [] for n in names}
    probes = [_slow.probe()]
    for repeat in range(max(counts.values(), default=0)):
        for name in (n for n in names if counts[n] > repeat):
            if repeat == 0:
                built[name]().block_until_ready()
            taken[name].append(_timed_sample(built[name], steps))
    probes.append(_slow.probe())
    return {"event": "round", "seconds": {n: statistics.median(v) for n, v in taken.items()},
            "probe": probes}


# A variant whose sample is shorter than this takes several in each turn, up to MAX_SAMPLES,
# and its figure is their median. Why: a 7 ms sample (the tiny MLP's) is shorter than the probe,
# and in rounds 2-4 of run M the tiny MLP's `luxc autotune` took up to 1.9x the same process's
# `luxc` in the same turn with the probe under 1.2x; the transformer block's one 0.23 s sample
# put `luxc` between 67 and 87 ms in one run. One short sample is one draw of the machine's
# stalls; the median of three or more is not moved by one.
TURN_SECONDS = 0.5
MAX_SAMPLES = 7


def samples_per_turn(warm_seconds: float) -> int:
    """How many samples a variant whose warm sample took ``warm_seconds`` takes per turn."""
    return max(1, min(MAX_SAMPLES, math.ceil(TURN_SECONDS / max(warm_seconds, 1e-9))))


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
    built, first, flops, samples = {}, {}, {}, {}
    for name, make in makers.items():
        t0 = time.perf_counter()
        step = make()
        step().block_until_ready()
        first[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _timed_sample(step, steps)  # warm: a full sample's worth
        samples[name] = samples_per_turn(time.perf_counter() - t0)
        built[name] = step
        if hasattr(step, "flops"):
            flops[name] = step.flops()
    if args.workload == cases.GEMM:
        flops = dict.fromkeys(built, cases.gemm_flops(cases.gemm_size(args.quick)))
    return built, {"event": "ready", "first_seconds": first, "first_fresh": next(iter(first), None),
                   "flops": flops, "skipped": skipped, "steps": steps, "samples": samples}


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
            reply = _round(built, ready["steps"], command["seed"], ready["samples"])
            _protocol.send(channel, reply)
        elif command["cmd"] == "stats":
            _protocol.send(channel, _stats())
        elif command["cmd"] == "exit":
            break


if __name__ == "__main__":
    main()
