"""Initialisers shared by the layers: ``init(key, shape, dtype) -> jax.Array``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from luxc.nn import _draws

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def uniform_fan_in(fan_in: int, gain: float = 1 / math.sqrt(3)) -> Initializer:
    r"""U(-b, b) with :math:`b = \sqrt{3}\,\mathrm{gain}/\sqrt{\mathrm{fan\_in}}` (Kaiming
    uniform). The default gain gives U(±1/√fan_in), Lux's default bias; Lux's default weight
    uses :func:`lux_gain` of the activation."""
    bound = math.sqrt(3) * gain / math.sqrt(fan_in) if fan_in else 0.0

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return _draws.uniform(key, shape, dtype, -bound, bound)

    return init


_GAINS = {jax.nn.relu: 2.0, jnp.tanh: 5 / 3, jax.nn.leaky_relu: math.sqrt(2 / (1 + 5)),
          jax.nn.selu: 3 / 4}


def lux_gain(activation: Callable | None) -> float:
    """The gain Lux's Dense and Conv give ``kaiming_uniform`` for their default weight
    (``Utils.calculate_gain(activation, √5)``): relu 2, tanh 5/3, leaky_relu √(1/3), selu 3/4,
    anything else (identity, sigmoid, ...) 1."""
    return _GAINS.get(activation, 1.0)


def zeros(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    return jnp.zeros(tuple(shape), dtype)


def ones(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    return jnp.ones(tuple(shape), dtype)


def activation_name(fn: Callable | None) -> str:
    return getattr(fn, "__name__", repr(fn)) if fn is not None else ""
