"""The ``gpt`` workload: examples/charlm.py's character-level GPT (6 pre-LN blocks, causal
attention, untied head), one training step (forward + next-token cross-entropy + backward + Adam
1e-3) in luxc, hand-written ``jax.jit`` + optax, flax nnx and ``torch.compile``, each in float32
and in its own bf16 mode:

- luxc: ``CompileOptions(mixed_precision="bf16")`` (float32 master weights, bf16 compute);
- jax.jit + optax: the parameters cast to bf16 inside the loss, by hand;
- flax nnx: every module built with ``dtype=jnp.bfloat16`` (``param_dtype`` stays float32);
- torch.compile: the step under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc.examples import charlm

try:
    from benchmarks import workloads as wl
    from benchmarks.peers_jax import Step, jit_adam_step, luxc_step, nnx_adam_step
    from benchmarks.peers_torch import target, waitable
except ImportError:  # run from benchmarks/
    import workloads as wl
    from peers_jax import Step, jit_adam_step, luxc_step, nnx_adam_step
    from peers_torch import target, waitable

CONFIG = charlm.Config(layers=6, dim=128, heads=4, context=128, batch=16)
VOCAB = 128


def _tokens():
    ids = jax.random.randint(jax.random.key(4), (CONFIG.batch, CONFIG.context + 1), 0, VOCAB)
    return ids[:, :-1], ids[:, 1:]


WORKLOAD = wl.Workload(
    "gpt", "GPT 6 blocks",
    f"character GPT {CONFIG.layers} blocks W{CONFIG.dim} {CONFIG.heads} heads T{CONFIG.context} "
    f"vocab {VOCAB}, b{CONFIG.batch}", 3, 1, _tokens,
    lambda: charlm.GPT(VOCAB, CONFIG), lambda: charlm.objective)


def tokens_per_step() -> int:
    return CONFIG.batch * CONFIG.context


def luxc_gpt(work: wl.Workload, x, y, bf16: bool = False) -> Step:
    """``single_train_step_`` on charlm's objective, bf16 through ``CompileOptions``."""
    return luxc_step(work, x, y, luxc.CompileOptions(mixed_precision="bf16" if bf16 else None))


def _cross_entropy(logits, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y))


def jax_gpt(work: wl.Workload, x, y, bf16: bool = False) -> Step:
    """The same luxc model function under one donating ``jax.jit``; bf16 by casting the
    parameters inside the loss (gradients and Adam stay float32)."""
    model = work.model()
    params, st = luxc.setup(jax.random.key(0), model)

    def loss(p, x, y):
        if bf16:
            p = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), p)
        return _cross_entropy(model(x, p, st)[0], y)

    return jit_adam_step(loss, params, x, y)


def _nnx_gpt(bf16: bool):
    from flax import nnx

    c, rngs = CONFIG, nnx.Rngs(0)
    kw = {"dtype": jnp.bfloat16 if bf16 else jnp.float32, "rngs": rngs}

    class Block(nnx.Module):
        def __init__(self):
            self.ln1 = nnx.LayerNorm(c.dim, epsilon=1e-5, **kw)
            self.ln2 = nnx.LayerNorm(c.dim, epsilon=1e-5, **kw)
            self.q, self.k, self.v, self.o = (nnx.Linear(c.dim, c.dim, use_bias=False, **kw)
                                              for _ in range(4))
            self.up, self.down = nnx.Linear(c.dim, 4 * c.dim, **kw), nnx.Linear(4 * c.dim, c.dim, **kw)

        def __call__(self, x):
            h = self.ln1(x)
            b, t, _ = h.shape
            q, k, v = (f(h).reshape(b, t, c.heads, c.dim // c.heads) for f in (self.q, self.k, self.v))
            x = x + self.o(jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, c.dim))
            return x + self.down(nnx.gelu(self.up(self.ln2(x))))

    class GPT(nnx.Module):
        def __init__(self):
            self.tok = nnx.Embed(VOCAB, c.dim, **kw)
            self.pos = nnx.Embed(c.context, c.dim, **kw)
            self.blocks = nnx.List([Block() for _ in range(c.layers)])
            self.norm = nnx.LayerNorm(c.dim, epsilon=1e-5, **kw)
            self.head = nnx.Linear(c.dim, VOCAB, **kw)

        def __call__(self, ids):
            h = self.tok(ids) + self.pos(jnp.arange(ids.shape[1]))
            for block in self.blocks:
                h = block(h)
            return self.head(self.norm(h))

    return GPT()


def flax_gpt(work: wl.Workload, x, y, bf16: bool = False) -> Step:
    return nnx_adam_step(_nnx_gpt(bf16), _cross_entropy, x, y)


def _torch_gpt():
    import torch
    import torch.nn.functional as F
    from torch import nn

    c = CONFIG

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(c.dim), nn.LayerNorm(c.dim)
            self.q, self.k, self.v, self.o = (nn.Linear(c.dim, c.dim, bias=False) for _ in range(4))
            self.mlp = nn.Sequential(nn.Linear(c.dim, 4 * c.dim), nn.GELU(approximate="tanh"),
                                     nn.Linear(4 * c.dim, c.dim))

        def forward(self, x):
            b, t, w = x.shape
            h = self.ln1(x)
            q, k, v = (f(h).view(b, t, c.heads, w // c.heads).transpose(1, 2)
                       for f in (self.q, self.k, self.v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, w))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(VOCAB, c.dim), nn.Embedding(c.context, c.dim)
            self.blocks = nn.Sequential(*(Block() for _ in range(c.layers)))
            self.norm, self.head = nn.LayerNorm(c.dim), nn.Linear(c.dim, VOCAB)

        def forward(self, ids):
            h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
            return self.head(self.norm(self.blocks(h)))

    return GPT()


def torch_gpt(work: wl.Workload, x, y, bf16: bool = False, device: bool = False) -> Step:
    """``torch.compile`` of the whole step; bf16 through autocast. torch's default threads
    and OpenMP policy (:func:`benchmarks.peers_torch.torch_step`)."""
    import torch
    import torch.nn.functional as F

    where = target(device)
    torch.manual_seed(0)
    model = _torch_gpt().to(where)
    tx = torch.from_numpy(np.array(x, np.int64)).to(where)
    ty = torch.from_numpy(np.array(y, np.int64)).to(where)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(where, dtype=torch.bfloat16, enabled=bf16):
            logits = model(tx)
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), ty.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    return waitable(torch.compile(train_step))


# (group, name, package it needs or None, maker)
_MAKERS = (("luxc", "luxc", None, luxc_gpt), ("jax", "jax.jit+optax", None, jax_gpt),
           ("jax", "flax nnx", "flax", flax_gpt), ("torch", "torch.compile", "torch", torch_gpt))


def variants(group: str, device: bool) -> dict[str, tuple[str | None, Callable]]:
    """``group``'s variants, f32 and bf16 each: name -> (package it needs, or None; maker)."""
    if group == "ablation":
        from benchmarks.ablation import makers

        return makers(WORKLOAD.key)
    out = {}
    for owner, name, module, make in _MAKERS:
        if owner != group:
            continue
        kw = {"device": device} if owner == "torch" else {}
        for bf16 in (False, True):
            out[f"{name} {'bf16' if bf16 else 'f32'}"] = (
                module, lambda w, x, y, make=make, bf16=bf16, kw=kw: make(w, x, y, bf16, **kw))
    if group == "luxc":
        out["luxc autotune f32"] = (None, lambda w, x, y: luxc_step(
            w, x, y, luxc.CompileOptions(autotune=True)))
    return out
