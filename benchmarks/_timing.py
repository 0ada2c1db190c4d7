"""Interleaved timing: variants run in turns so machine noise hits all alike.

The order is shuffled every round (seeded): a variant that leaves work behind (torch's OpenMP
threads spin after a step) then precedes every other variant about equally often. (A cyclic
rotation does not do that: each variant keeps the same predecessor.)
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def interleaved(variants: dict[str, Callable[[], object]], *, rounds: int = 7,
                calls: int = 50) -> dict[str, float]:
    """Median seconds per call of each variant; each round times ``calls`` calls of each."""
    for fn in variants.values():  # warm-up (and compile)
        fn()
    return {name: statistics.median(s) for name, s in samples(variants, rounds, calls).items()}


def samples(variants: dict[str, Callable[[], object]], rounds: int,
            calls: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round (``calls`` calls each), the
    variants in a new shuffled order every round."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    order = random.Random(0)
    for _ in range(rounds):
        order.shuffle(names)
        for name in names:
            fn = variants[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out[name].append((time.perf_counter() - t0) / calls)
    return out


def steps(fn: Callable[[], object], n: int) -> Callable[[], None]:
    """``n`` calls of a step, then wait for the last result: what a training loop sees."""
    def run() -> None:
        for _ in range(n):
            out = fn()
        out.block_until_ready()

    return run


def report(title: str, medians: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    base = medians[baseline]
    for name, t in medians.items():
        print(f"  {name:<48} {t * 1e6:10.1f} µs   {t / base:5.2f}× {baseline}")
