"""The ``depth`` workload: N pre-LN transformer blocks (workloads.transformer_block: W256, 4 heads,
MLP 1024, T128, batch 8), one fwd+bwd+Adam step, for luxc ``Chain`` (unrolled), luxc ``Stack``
(``lax.scan``; its default ``remat="dots_saveable"``, and ``remat=None``: every residual kept),
luxc ``Stack(remat="nothing_saveable")``, and hand-written ``jax.jit`` + optax,
unrolled and with ``lax.scan``, and ``torch.compile`` of the same blocks (when torch is
installed; its temporaries are not XLA's, so not shown). Interleaved; first-step seconds,
ms/step, ms per block and the compiled step's temporaries (``memory_analysis()``).

    python -m benchmarks --only depth --depths 1,4 --quick
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import luxc
from luxc import nn

try:
    from benchmarks import workloads as wl
    from benchmarks._timing import samples, steps
    from benchmarks.peers_jax import jit_adam_step
    from benchmarks.peers_torch import torch_step
except ImportError:  # run from benchmarks/
    import workloads as wl
    from _timing import samples, steps
    from peers_jax import jit_adam_step
    from peers_torch import torch_step

B = 8
DEPTHS = (1, 4, 12, 24)


def _data():
    x = jax.random.normal(jax.random.key(1), (B, wl.T, wl.W))
    return x, jax.random.normal(jax.random.key(2), (B, wl.T, wl.W))


def _luxc(model: nn.AbstractLayer) -> tuple[Callable, Callable]:
    ps, st = luxc.setup(0, model)
    state = {"ts": luxc.TrainState(model, ps, st, optax.adam(1e-3))}
    data = _data()

    def step():
        _, loss, _, state["ts"] = luxc.training.single_train_step_(
            luxc.AutoXLA(), luxc.MSELoss(), data, state["ts"], return_gradients=False)
        return loss

    def temporaries():
        cs = luxc.compile_step(luxc.MSELoss(), data, state["ts"], return_gradients=False)
        return cs.memory_analysis()["temp_size_in_bytes"]

    return step, temporaries


def microbatch_table(n: int = 12, ks: tuple[int, ...] = (1, 2, 4, 8)) -> str:
    """XLA's temporaries of the ``n``-block ``Stack`` step with ``CompileOptions(microbatches=k)``
    (batch 8: k = 8 runs one sequence at a time), against 1/k of k = 1's. Compiles only."""
    model = nn.Stack(wl.transformer_block(), n)
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    temps = {k: luxc.compile_step(luxc.MSELoss(), _data(), ts, return_gradients=False,
                                  compile_options=luxc.CompileOptions(microbatches=k))
             .memory_analysis()["temp_size_in_bytes"] / 2 ** 20 for k in ks}
    mib = 4 * luxc.parameter_count(model) / 2 ** 20
    lines = [f"`microbatches=k`, {n}-block `Stack`, batch {B} ({mib:.1f} MiB of parameters):", "",
             "| k | temporaries MiB | 1/k of k = 1's | ratio |", "|---:|---:|---:|---:|"]
    lines += [f"| {k} | {t:.1f} | {temps[ks[0]] / k:.1f} | {t / (temps[ks[0]] / k):.2f} |"
              for k, t in temps.items()]
    return "\n".join(lines)


def _layer_norm(x, g, b):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * g + b


def _block(p, x):
    q, k, v = jnp.split(_layer_norm(x, p["g1"], p["b1"]) @ p["qkv"], 3, axis=-1)
    heads = [t.reshape(*x.shape[:2], wl.H, wl.W // wl.H) for t in (q, k, v)]
    x = x + wl.attention(*heads).reshape(x.shape) @ p["out"]
    h = jax.nn.gelu(_layer_norm(x, p["g2"], p["b2"]) @ p["up"])
    return x + h @ p["down"]


def _params(key):
    k = jax.random.split(key, 4)
    w = lambda kk, shape: jax.random.normal(kk, shape) / math.sqrt(shape[0])
    return {"g1": jnp.ones(wl.W), "b1": jnp.zeros(wl.W), "g2": jnp.ones(wl.W), "b2": jnp.zeros(wl.W),
            "qkv": w(k[0], (wl.W, 3 * wl.W)), "out": w(k[1], (wl.W, wl.W)),
            "up": w(k[2], (wl.W, wl.M)), "down": w(k[3], (wl.M, wl.W))}


def _jax(n: int, scan: bool) -> tuple[Callable, Callable]:
    keys = jax.random.split(jax.random.key(0), n)
    blocks = [_params(k) for k in keys]
    params = jax.tree.map(lambda *a: jnp.stack(a), *blocks) if scan else blocks

    def loss(params, x, y):
        if scan:
            x, _ = jax.lax.scan(lambda h, p: (_block(p, h), None), x, params)
        else:
            for p in params:
                x = _block(p, x)
        return jnp.mean((x - y) ** 2)

    x, y = _data()
    step = jit_adam_step(loss, params, x, y)

    def temporaries():
        compiled = step.update.lower(step.state["p"], step.state["o"], x, y).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    return step, temporaries


def _torch_compile(n: int) -> tuple[Callable, Callable]:
    work = next(w for w in wl.WORKLOADS if w.key == "transformer")
    x, y = _data()
    return torch_step(work, x, y, compiled=True, blocks=n), lambda: math.nan  # XLA's figure only


VARIANTS: dict[str, Callable[[int], tuple[Callable, Callable]]] = {
    "luxc Chain": lambda n: _luxc(nn.Chain(*[wl.transformer_block() for _ in range(n)])),
    "luxc Stack": lambda n: _luxc(nn.Stack(wl.transformer_block(), n)),  # remat="dots_saveable"
    "luxc Stack remat=None": lambda n: _luxc(nn.Stack(wl.transformer_block(), n, remat=None)),
    "luxc Stack remat": lambda n: _luxc(nn.Stack(wl.transformer_block(), n, remat="nothing_saveable")),
    "jax.jit unrolled": lambda n: _jax(n, scan=False),
    "jax.jit lax.scan": lambda n: _jax(n, scan=True),
}
if importlib.util.find_spec("torch") is not None:
    VARIANTS["torch.compile"] = _torch_compile


def run(depths: tuple[int, ...], rounds: int, n_steps: int,
        variants: tuple[str, ...] | None = None) -> list[dict]:
    """One row per (variant, depth); every variant of every depth interleaved in one run
    (``variants``: names of ``VARIANTS``, default all)."""
    unknown = set(variants or ()) - set(VARIANTS)
    if unknown:
        raise ValueError(f"depth variants: no variant named {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(VARIANTS)}")
    made, first, temps = {}, {}, {}
    for n in depths:
        for name, make in VARIANTS.items():
            if variants and name not in variants:
                continue
            step, temporaries = make(n)
            t0 = time.perf_counter()
            step().block_until_ready()
            first[name, n] = time.perf_counter() - t0
            temps[name, n] = temporaries()
            made[name, n] = steps(step, n_steps)
            made[name, n]()
    timed = samples({f"{k[0]}|{k[1]}": v for k, v in made.items()}, rounds, 1)
    rows = []
    for (name, n) in made:
        ms = statistics.median(timed[f"{name}|{n}"]) / n_steps * 1e3
        rows.append({"variant": name, "blocks": n, "first_s": first[name, n], "ms": ms,
                     "ms_per_block": ms / n, "temp_mib": temps[name, n] / 2 ** 20})
    return rows


def table(rows: list[dict]) -> str:
    # first step - one steady step: the trace + compile part of the first step (the first step
    # also runs a step, which alone grows with depth).
    lines = ["| variant | blocks | first step s | first − one step s | ms/step | ms/block | "
             "temporaries MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["variant"], r["blocks"])):
        lines.append(f"| {r['variant']} | {r['blocks']} | {r['first_s']:.2f} | "
                     f"{r['first_s'] - r['ms'] / 1e3:.2f} | {r['ms']:.1f} | "
                     f"{r['ms_per_block']:.1f} | {r['temp_mib']:.1f} |")
    return "\n".join(lines)
