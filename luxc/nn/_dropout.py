"""Dropout, with its random key in the state so that a step is a pure function."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from luxc.nn._core import AbstractLayer, Val


class Dropout(AbstractLayer):
    r"""Zeroes each element with probability ``p`` in training mode and scales the rest by
    :math:`1/(1-p)`; the identity in test mode.

    State: ``rng`` (a jax random key, split on every call so two calls draw different masks and
    the same state always draws the same mask) and ``training``.

    Args:
        p: drop probability in ``[0, 1)``.
        dims: axes along which the mask varies (it is broadcast along the others);
            ``None`` (default) draws an independent mask per element.
    """

    def __init__(self, p: float, *, dims: int | Sequence[int] | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1); received {p}")
        self.p = p
        self.dims = (dims,) if isinstance(dims, int) else (None if dims is None else tuple(dims))

    def init_states(self, key: jax.Array) -> dict:
        # Raw key data (uint32[2]) rather than a typed key: it survives export and checkpoints.
        return {"rng": jax.random.key_data(key), "training": Val(True)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        if not st["training"] or self.p == 0.0:
            return x, st
        rng, sub = jax.random.split(jax.random.wrap_key_data(st["rng"]))
        shape = x.shape
        if self.dims is not None:
            keep = {d % x.ndim for d in self.dims}
            shape = tuple(s if i in keep else 1 for i, s in enumerate(x.shape))
        mask = jax.random.bernoulli(sub, 1.0 - self.p, shape)
        y = jnp.where(mask, x / (1.0 - self.p), jnp.zeros((), x.dtype))
        return y.astype(x.dtype), {**st, "rng": jax.random.key_data(rng)}

    def summary(self) -> str:
        return f"Dropout({self.p})"
