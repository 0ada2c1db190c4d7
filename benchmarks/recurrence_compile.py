"""The first training step of an LSTM over T time steps: luxc's ``Recurrence`` (one
``lax.scan``) against the same cell unrolled in a Python loop under ``jax.jit`` (what Lux's
``Recurrence`` does; Reactant traces the unrolled loop the same way).

    python -m benchmarks.recurrence_compile                # the table, T = 16, 256, 4096
    python -m benchmarks.recurrence_compile 256 unrolled   # one sample (used by the table)

Each sample is a fresh process: import jax, build the model and data, then the clock covers
tracing, lowering, (luxc's passes,) XLA's compile and one step. "module" is the traced
StableHLO text in characters (luxc: ``CompiledStep.as_text("traced")``; jax: ``Lowered.as_text()``).
A sample that takes longer than ``TIMEOUT`` seconds is reported as such. The model: LSTMCell(32 =>
64), then Dense(64 => 1) on the last output, batch 16, MSE, Adam.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn

STEPS = (16, 256, 4096)
VARIANTS = ("luxc", "unrolled")
TIMEOUT = 600
BATCH, IN, HIDDEN = 16, 32, 64


def _problem(t: int):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(BATCH, t, IN)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(BATCH, 1)), jnp.float32)
    return x, y


def luxc_sample(t: int) -> float:
    model = nn.Chain(nn.Recurrence(nn.LSTMCell(IN, HIDDEN)), nn.Dense(HIDDEN, 1))
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    data = _problem(t)
    t0 = time.perf_counter()
    cs = luxc.compile_step(luxc.MSELoss(), data, ts)
    jax.block_until_ready(cs(ts, data)[1])
    seconds = time.perf_counter() - t0
    print("module", len(cs.as_text("traced")), flush=True)
    return seconds


def unrolled_sample(t: int) -> float:
    cell, head = nn.LSTMCell(IN, HIDDEN), nn.Dense(HIDDEN, 1)
    ps = {"cell": luxc.setup(0, cell)[0], "head": luxc.setup(1, head)[0]}
    st = luxc.setup(0, cell)[1]
    opt = optax.adam(1e-3)

    def loss(p, x, y):
        (h, carry), s = cell(x[:, 0], p["cell"], st)
        for i in range(1, x.shape[1]):
            (h, carry), s = cell((x[:, i], carry), p["cell"], s)
        return jnp.mean((head(h, p["head"], {})[0] - y) ** 2)

    def step(p, o, x, y):
        value, grads = jax.value_and_grad(loss)(p, x, y)
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o, value

    x, y = _problem(t)
    o = opt.init(ps)
    t0 = time.perf_counter()
    lowered = jax.jit(step).lower(ps, o, x, y)
    # Printed before compiling, so a compile that outlasts TIMEOUT still reports its module.
    print("module", len(lowered.as_text()), flush=True)
    jax.block_until_ready(lowered.compile()(ps, o, x, y)[2])
    return time.perf_counter() - t0


def _fresh(t: int, variant: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("LUXC_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    try:
        r = subprocess.run([sys.executable, "-m", "benchmarks.recurrence_compile", str(t), variant],
                           capture_output=True, text=True, cwd=root, env=env, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return f"> {TIMEOUT} s | {_module(out)}"
    if r.returncode != 0:
        raise RuntimeError(f"{variant} at T={t} failed: {r.stderr[-2000:]}")
    return f"{float(r.stdout.split()[-1]):.2f} s | {_module(r.stdout)}"


def _module(stdout: str) -> str:
    sizes = [line.split()[1] for line in stdout.splitlines() if line.startswith("module ")]
    return f"{int(sizes[0]):,}" if sizes else "not traced in time"


def table() -> str:
    load = os.getloadavg()
    lines = [f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores",
             "| T | luxc first step | luxc module (chars) | unrolled jax.jit first step | "
             "unrolled module (chars) |", "|---:|---:|---:|---:|---:|"]
    for t in STEPS:
        cells = [_fresh(t, v) for v in VARIANTS]
        lines.append(f"| {t} | {cells[0]} | {cells[1]} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        sample = luxc_sample if sys.argv[2] == "luxc" else unrolled_sample
        print(f"{sample(int(sys.argv[1])):.6f}")
    else:
        print(table())
