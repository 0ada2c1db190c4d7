"""Does XLA:CPU spread a batched matrix product over the cores? Attention's products against
one plain product of the same FLOPs, on every core and on one.

Run: python -m benchmarks.bench_batched_dot [--quick]

Why this exists: on the transformer block, attention's six batched products (``(B·H, T, D)``
by ``(B·H, D, T)`` and back: T128, D64, 64 heads in all) ran at 60-110 GFLOP/s where the
block's plain products ran at about 200 (``luxc profile --ops``, 2026-12-06). Timed alone on
the AMD EPYC of that day, a ``(64, 128, 64) x (64, 64, 128)`` product took 1.34 ms on both
cores and 1.34 ms pinned to one: both of XLA:CPU's paths for it (YNNPACK's fusion, and
Eigen's, which runs the batch one small product at a time) keep it on one core, while a plain
``(1024, 64) x (64, 1024)`` product of the same FLOPs ran 1.9x faster on two cores than on
one (``benchmarks/README.md``, *Also left*, 2026-12-06 02:10 UTC, where the products fused
with the softmax are the exceptions). torch's SDPA spreads heads over the cores; this is most
of what separates luxc from it on the f32 block. Run it again on a new jaxlib or another CPU:
a batched speed-up near the plain one means the attention products now use every core.

Each case runs in a fresh process, once with the process's cores and once pinned to one core
(``os.sched_setaffinity``, set before jax starts). Medians of nine samples of 20 products;
no figure here is published.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, batch, m, k, n): attention's two shapes of product, and plain ones of equal FLOPs.
CASES = [
    ("scores  (64, 128, 64) x (64, 64, 128)", 64, 128, 64, 128),
    ("values  (64, 128, 128) x (64, 128, 64)", 64, 128, 128, 64),
    ("plain   (1024, 64) x (64, 1024)", 1, 1024, 64, 1024),
    ("plain   (1024, 1024) x (1024, 128)", 1, 1024, 1024, 128),
]
QUICK_CASES = [("scores  (8, 64, 32) x (8, 32, 64)", 8, 64, 32, 64),
               ("plain   (256, 32) x (32, 128)", 1, 256, 32, 128)]


def _measure(batch: int, m: int, k: int, n: int, rounds: int) -> float:
    """Median seconds of one product (run in the child process)."""
    import jax
    import jax.numpy as jnp

    from benchmarks._timing import interleaved, steps

    a = jax.random.normal(jax.random.key(0), (batch, m, k))
    b = jax.random.normal(jax.random.key(1), (batch, k, n))
    product = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b))
    return interleaved({"product": steps(lambda: product(a, b), 20)}, rounds=rounds,
                       calls=1)["product"] / 20


def _child(spec: str) -> None:
    case = json.loads(spec)
    if case["one_core"]:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    seconds = _measure(case["batch"], case["m"], case["k"], case["n"], case["rounds"])
    print(json.dumps({"seconds": seconds, "cores": len(os.sched_getaffinity(0))}))


def timed(case: tuple, one_core: bool, rounds: int) -> dict:
    """``{"seconds": ..., "cores": ...}``: ``case`` timed in a fresh process on its cores
    (``one_core``: pinned to one)."""
    _, batch, m, k, n = case
    spec = json.dumps({"batch": batch, "m": m, "k": k, "n": n, "one_core": one_core,
                       "rounds": rounds})
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_batched_dot", "--child", spec],
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small cases, 3 rounds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    cases, rounds = (QUICK_CASES, 3) if args.quick else (CASES, 9)
    cores = len(os.sched_getaffinity(0))
    print(f"| product | GFLOP/s, {cores} cores | GFLOP/s, 1 core | speed-up |")
    print("|---|---:|---:|---:|")
    for case in cases:
        flops = 2 * case[1] * case[2] * case[3] * case[4]
        every, one = (timed(case, pinned, rounds)["seconds"] for pinned in (False, True))
        print(f"| {case[0]} | {flops / every / 1e9:.0f} | {flops / one / 1e9:.0f} | "
              f"{one / every:.2f} |", flush=True)


if __name__ == "__main__":
    main()
