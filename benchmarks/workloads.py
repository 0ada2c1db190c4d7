"""The five workloads of the benchmark: a luxc model, its loss and a synthetic batch each.

Every peer implements the same model and loss (``benchmarks/peers_*.py``); every step is
forward + loss + backward + Adam(1e-3) on a batch passed as an argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

import luxc
from luxc import nn

# The transformer block's sizes: T tokens of width W, H heads, an MLP of width M, batch B.
T, W, H, M, B = 128, 256, 4, 1024, 16


@dataclass(frozen=True)
class Workload:
    """A benchmark case: ``steps`` training steps are timed per sample (``quick_steps`` with
    ``--quick``)."""

    key: str
    label: str
    title: str
    steps: int
    quick_steps: int
    data: Callable[[], tuple[jax.Array, jax.Array]]
    model: Callable[[], object]
    loss: Callable[[], object]


def _normal(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def _labels(n: int, classes: int = 10):
    return jax.nn.one_hot(jax.random.randint(jax.random.key(2), (n,), 0, classes), classes)


def tiny_mlp():
    return nn.Chain(nn.Dense(4, 32, jax.nn.relu), nn.Dense(32, 32, jax.nn.relu), nn.Dense(32, 2))


def mlp():
    return nn.Chain(nn.Dense(784, 512, jax.nn.relu), nn.Dense(512, 512, jax.nn.relu), nn.Dense(512, 10))


def lenet():
    from luxc.examples.lenet import make_model

    return make_model()


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention over ``(B, T, H, D)`` heads, written as users write it."""
    s = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v)


def transformer_block():
    """Pre-LN block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` with a tanh-GELU MLP."""

    @luxc.compact(ln1=nn.LayerNorm(W), qkv=nn.Dense(W, 3 * W), out=nn.Dense(W, W),
                  ln2=nn.LayerNorm(W), up=nn.Dense(W, M, jax.nn.gelu), down=nn.Dense(M, W))
    def block(self, x):
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        heads = [t.reshape(*x.shape[:2], H, W // H) for t in (q, k, v)]
        x = x + self.out(attention(*heads).reshape(x.shape))
        return x + self.down(self.up(self.ln2(x)))

    return block


def dice_head():
    """A per-pixel sigmoid head (8 features -> 1) under a Dice loss: reduction-bound."""
    return nn.Chain(nn.Dense(8, 1, jax.nn.sigmoid), lambda p: p[..., 0])


def _dice_data():
    x = _normal((16, 16384, 8))
    y = (jax.random.uniform(jax.random.key(3), (16, 16384)) > 0.5).astype(jnp.float32)
    return x, y


WORKLOADS = (
    Workload("tiny", "tiny MLP", "tiny MLP 4-32-32-2, b8 (dispatch-bound)", 200, 50,
             lambda: (_normal((8, 4)), _normal((8, 2), 2)), tiny_mlp, luxc.MSELoss),
    Workload("mlp", "MLP 784-512-512-10", "MLP 784-512-512-10, b256", 20, 5,
             lambda: (_normal((256, 784)), _labels(256)), mlp,
             lambda: luxc.CrossEntropyLoss(logits=True)),
    Workload("lenet", "LeNet-5", "LeNet-5 28x28x1, b128", 10, 3,
             lambda: (_normal((128, 28, 28, 1)), _labels(128)), lenet,
             lambda: luxc.CrossEntropyLoss(logits=True)),
    Workload("transformer", "transformer block",
             f"pre-LN transformer block T{T} W{W} {H} heads MLP{M}, b{B}", 3, 1,
             lambda: (_normal((B, T, W)), _normal((B, T, W), 2)), transformer_block, luxc.MSELoss),
    Workload("dice", "Dice head", "Dice head 16x16384x8 (loss-bound)", 20, 5, _dice_data, dice_head,
             luxc.DiceCoeffLoss),
)
