"""The first step of luxc and of hand-written ``jax.jit``, each in a fresh Python process.

    python -m benchmarks.first_step mlp luxc      # prints the seconds of one first step

In one process the variant that runs first pays jax's one-time work (backend start, the first
compile) and the later ones reuse what it traced, so the first-call column of the main run
favours whoever comes later. Here every sample is a new process that does the same before its
clock starts: import jax, build the data and the step, compile and run one trivial jit. The
clock covers the first call: tracing, luxc's passes, XLA's compile and one step. Samples of the
two variants alternate, so the machine's load falls on both alike; no persistent compilation
cache is configured, so nothing is read from disk.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

try:
    from benchmarks import peers_gpt, peers_jax
    from benchmarks import workloads as wl
except ImportError:  # run from benchmarks/
    import peers_gpt
    import peers_jax
    import workloads as wl

VARIANTS = ("luxc", "jax.jit")


def _maker(key: str, variant: str):
    if key == peers_gpt.WORKLOAD.key:
        return peers_gpt.WORKLOAD, peers_gpt.luxc_gpt if variant == "luxc" else peers_gpt.jax_gpt
    work = next(w for w in wl.WORKLOADS if w.key == key)
    return work, peers_jax.luxc_step if variant == "luxc" else peers_jax.jax_jit_step


def first_step(key: str, variant: str) -> float:
    """Seconds of ``variant``'s first step on workload ``key``, in this process."""
    work, make = _maker(key, variant)
    x, y = work.data()
    step = make(work, x, y)
    jax.block_until_ready(jax.jit(lambda a: a + 1)(jnp.ones(3)))
    t0 = time.perf_counter()
    jax.block_until_ready(step())
    return time.perf_counter() - t0


def fresh_samples(key: str, samples: int) -> dict[str, list[float]]:
    """``samples`` first steps of each variant, each in a new process, alternating."""
    env = {k: v for k, v in os.environ.items() if k not in ("LUXC_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(samples):
        for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            r = subprocess.run([sys.executable, "-m", "benchmarks.first_step", key, variant],
                               capture_output=True, text=True, cwd=root, env=env, timeout=900)
            if r.returncode != 0:
                raise RuntimeError(f"first step of {variant} on {key} failed: {r.stderr[-2000:]}")
            out[variant].append(float(r.stdout.strip().splitlines()[-1]))
    return out


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in samples.items()}


if __name__ == "__main__":
    print(f"{first_step(sys.argv[1], sys.argv[2]):.6f}")
