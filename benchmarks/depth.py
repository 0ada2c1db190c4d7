"""The ``depth-N`` workloads: N pre-LN transformer blocks (workloads.transformer_block: W256,
4 heads, MLP 1024, T128, batch 8), one fwd+bwd+Adam step, as luxc ``Stack`` (``lax.scan``; its
default ``remat="auto"``: ``"dots_saveable"`` in float32, ``"nothing_saveable"`` in bf16) and
luxc ``Chain`` of the blocks as users write it (unrolled below 8 blocks, one loop from 8:
luxc/nn/_chain_loop.py), hand-written ``jax.jit`` + optax unrolled and with ``lax.scan``, and
``torch.compile`` of the same blocks; in bf16 the ``Stack`` with ``mixed_precision="bf16"``
against ``torch.compile`` under autocast. Each group in its own process
(:mod:`benchmarks.cases`).

    python -m benchmarks --only depth-1,depth-12 --quick --allow-busy
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import luxc
from benchmarks import workloads as wl
from benchmarks.peers_jax import jit_adam_step
from luxc import nn

B = 8


def _data():
    x = jax.random.normal(jax.random.key(1), (B, wl.T, wl.W))
    return x, jax.random.normal(jax.random.key(2), (B, wl.T, wl.W))


def _luxc(model: nn.AbstractLayer, options: luxc.CompileOptions | None = None) -> Callable:
    ps, st = luxc.setup(0, model)
    state = {"ts": luxc.TrainState(model, ps, st, optax.adam(1e-3))}
    data = _data()

    def step():
        _, loss, _, state["ts"] = luxc.training.single_train_step_(
            luxc.AutoXLA(), luxc.MSELoss(), data, state["ts"], return_gradients=False,
            compile_options=options)
        return loss

    return step


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


def _jax(n: int, scan: bool) -> Callable:
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
    return jit_adam_step(loss, params, x, y)


def _torch_compile(n: int, device: bool, autocast: bool = False) -> Callable:
    from benchmarks.peers_torch import torch_step

    work = next(w for w in wl.WORKLOADS if w.key == "transformer")
    x, y = _data()
    return torch_step(work, x, y, compiled=True, autocast=autocast, blocks=n, device=device)


def variants(n: int, group: str, device: bool) -> dict[str, Callable[[], Callable]]:
    """``group``'s variants of the ``n``-block workload: name -> maker of a step."""
    if group == "luxc":
        bf16 = luxc.CompileOptions(mixed_precision="bf16")
        return {"luxc Stack": lambda: _luxc(nn.Stack(wl.transformer_block(), n)),
                "luxc Chain": lambda: _luxc(nn.Chain(*[wl.transformer_block() for _ in range(n)])),
                "luxc Stack bf16": lambda: _luxc(nn.Stack(wl.transformer_block(), n), bf16)}
    if group == "jax":
        return {"jax.jit unrolled": lambda: _jax(n, scan=False),
                "jax.jit lax.scan": lambda: _jax(n, scan=True)}
    if group == "torch":
        return {"torch.compile": lambda: _torch_compile(n, device),
                "torch.compile autocast bf16": lambda: _torch_compile(n, device, autocast=True)}
    return {}
