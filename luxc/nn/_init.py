"""Initialisers shared by the layers: ``init(key, shape, dtype) -> jax.Array``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def uniform_fan_in(fan_in: int) -> Initializer:
    """U(-1/√fan_in, 1/√fan_in): Lux 1.x's (and PyTorch's) default for Dense and Conv."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)

    return init


def zeros(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    return jnp.zeros(tuple(shape), dtype)


def ones(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    return jnp.ones(tuple(shape), dtype)


def activation_name(fn: Callable | None) -> str:
    return getattr(fn, "__name__", repr(fn)) if fn is not None else ""
