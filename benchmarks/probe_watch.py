"""``python -m benchmarks.probe_watch SECONDS``: watch the machine's speed, to see its slow stretches.

Times, in turn and over and over: the probe of :mod:`benchmarks._slow` (a pure-Python loop, one
core), 500 dispatches of a tiny ``jax.jit`` (what a dispatch-bound step pays) and 20 numpy
``256×256`` products (both cores). Prints each triple in ms, then the medians of each window of
200 samples and how often the probe was slow when the dispatches were.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._slow import probe

WINDOW = 200


def _dispatches(f, x) -> float:
    t0 = time.perf_counter()
    for _ in range(500):
        y = f(x)
    y.block_until_ready()
    return time.perf_counter() - t0


def _products(a: np.ndarray) -> float:
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    return time.perf_counter() - t0


def main(seconds: float) -> None:
    f, x = jax.jit(lambda a: a * 2.0 + 1.0), jnp.ones(8)
    f(x).block_until_ready()
    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append((probe(), _dispatches(f, x), _products(a)))
        print(" ".join(f"{v * 1e3:7.2f}" for v in samples[-1]), flush=True)
    fastest = [min(s[k] for s in samples) for k in range(3)]
    for start in range(0, len(samples), WINDOW):
        window = samples[start:start + WINDOW]
        print(f"window {start // WINDOW}: medians (ms) probe, dispatches, products",
              *(f"{statistics.median(s[k] for s in window) * 1e3:.2f}" for k in range(3)))
    slow = [s for s in samples if s[1] > 1.4 * fastest[1]]
    both = sum(s[0] > 1.2 * fastest[0] for s in slow)
    print(f"{len(samples)} samples; dispatches over 1.4x their fastest in {len(slow)}, "
          f"and the probe over 1.2x its fastest in {both} of those")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 240.0)
