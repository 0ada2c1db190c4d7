"""LuxOps: small operations that are useful in deep-learning code (Lux's ``LuxOps``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from luxc.nn._core import Val

__all__ = ["BatchLastIndex", "TimeLastIndex", "eachslice", "foldl_init", "getproperty",
           "istraining", "multigate", "rsqrt", "xlogx", "xlogy"]


class TimeLastIndex:
    """Lux's ``TimeLastIndex`` ordering: Julia's ``(features, batch, time)`` is luxc's
    row-major ``(time, batch, features)``, so :func:`eachslice` slices axis 0."""


class BatchLastIndex:
    """Lux's ``BatchLastIndex`` ordering (Lux's RNN default): Julia's ``(features, time,
    batch)`` is luxc's ``(batch, time, features)``, so :func:`eachslice` slices axis 1 (axis 0
    of an unbatched ``(time, features)`` matrix)."""


def eachslice(x: jax.Array, dims: int | Val | TimeLastIndex | BatchLastIndex) -> tuple[jax.Array, ...]:
    """The slices of ``x`` along axis ``dims`` (that axis removed), as a tuple of arrays.

    ``dims`` may also be one of Lux's RNN orderings, translated to the row-major layout as
    every Lux ``dims`` is (Julia's axis ``k`` is luxc's axis ``ndim - k``): ``BatchLastIndex()``
    gives the time steps of a ``(batch, time, features)`` array, ``TimeLastIndex()`` those of a
    ``(time, batch, features)`` array.

    >>> [s.shape for s in eachslice(jnp.zeros((2, 3)), 1)]
    [(2,), (2,), (2,)]
    >>> [s.shape for s in eachslice(jnp.zeros((4, 7, 5)), BatchLastIndex())][:1]
    [(4, 5)]
    """
    if isinstance(dims, Val):
        dims = dims.value
    if isinstance(dims, TimeLastIndex | BatchLastIndex):
        if jnp.ndim(x) < 2:
            raise ValueError(f"eachslice: {type(dims).__name__}() needs an array with at least "
                             f"2 axes; received shape {jnp.shape(x)}")
        dims = 1 if isinstance(dims, BatchLastIndex) and jnp.ndim(x) > 2 else 0
    if not isinstance(dims, int) or not -jnp.ndim(x) <= dims < jnp.ndim(x):
        raise ValueError(f"eachslice: dims must be an axis of an array of shape {jnp.shape(x)}; "
                         f"received {dims!r}")
    return tuple(jnp.moveaxis(jnp.asarray(x), dims, 0))


def foldl_init(op: Callable[[Any, Any], Any], x: Any, init: Any = None) -> Any:
    """``foldl(op, x; init)``: ``op(…op(op(init, x[0]), x[1])…, x[n-1])``, as Lux.

    The accumulator takes whatever type ``op`` gives it (``foldl_init(jnp.add, [0.5, 0.5], 0)``
    is ``1.0``, not an int). Differentiable w.r.t. ``init`` as well as ``x``. An array ``x`` is
    folded over its leading axis with ``lax.scan`` (one traced ``op``, whatever the length)
    once the accumulator's shape and dtype are stable after the first step; otherwise, and
    for any other ``x``, with a Python loop.

    >>> float(foldl_init(jnp.add, jnp.array([0.5, 0.5]), 0))
    1.0
    """
    if init is None:
        items = list(x)
        if not items:
            raise ValueError("foldl_init: an empty collection needs init")
        return functools.reduce(op, items[1:], items[0])
    if not (isinstance(x, jax.Array) and jnp.ndim(x) > 0 and len(x) > 1):
        return functools.reduce(op, x, init)
    carry = op(init, x[0])
    if jax.eval_shape(op, carry, x[1]) != jax.eval_shape(lambda c: c, carry):
        return functools.reduce(op, x[1:], carry)
    carry, _ = lax.scan(lambda c, xi: (op(c, xi), None), carry, x[1:])
    return carry


def getproperty(x: Any, name: str | Val) -> Any:
    """``x[name]`` for a dict, ``x.name`` otherwise; ``None`` when absent."""
    if isinstance(name, Val):
        name = name.value
    if isinstance(x, dict):
        return x.get(name)
    return getattr(x, name, None)


@jax.custom_jvp
def xlogx(x: jax.Array) -> jax.Array:
    r""":math:`x \log x` for :math:`x \ge 0`, with ``xlogx(0) == 0`` (the limit from above)."""
    x = jnp.asarray(x)
    safe = jnp.where(x == 0, jnp.ones_like(x), x)
    return jnp.where(x == 0, jnp.zeros_like(x), x * jnp.log(safe))


@xlogx.defjvp
def _xlogx_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # Zero sensitivity at x == 0, as Lux's rrule (log(0) would turn a zero tangent into NaN).
    safe = jnp.where(x == 0, jnp.ones_like(x), x)
    return xlogx(x), jnp.where(x == 0, jnp.zeros_like(dx), dx * (jnp.log(safe) + 1))


@jax.custom_jvp
def xlogy(x: jax.Array, y: jax.Array) -> jax.Array:
    r""":math:`x \log y`, and ``0`` wherever ``x == 0`` (so ``xlogy(0, 0) == 0``)."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    safe = jnp.where(x == 0, jnp.ones_like(y), y)
    return jnp.where(x == 0, jnp.zeros(jnp.broadcast_shapes(x.shape, y.shape), jnp.result_type(x, y)),
                     x * jnp.log(safe))


@xlogy.defjvp
def _xlogy_jvp(primals, tangents):
    (x, y), (dx, dy) = primals, tangents
    # Exactly zero sensitivity to x and y where x == 0, as Lux's rrule: xlogy(0, y) == 0 for
    # every y, and log(y) is kept finite there so 0 * log(0) never makes a NaN in either mode.
    zero = x == 0
    safe = jnp.where(zero, jnp.ones_like(y), y)
    dx_term = jnp.where(zero, jnp.zeros_like(dx * safe), dx * jnp.log(safe))
    dy_term = jnp.where(zero, jnp.zeros_like(dy * safe), dy * x / safe)
    return xlogy(x, y), dx_term + dy_term


def istraining(st: Any) -> bool:
    """``True`` for ``True``/``Val(True)``, or a state dict whose ``training`` entry is true."""
    if isinstance(st, dict):
        return bool(st.get("training", False))
    return bool(st)


def multigate(x: jax.Array, n: int | Val) -> tuple[jax.Array, ...]:
    """Split ``x`` into ``n`` equal chunks along the feature axis (the last one): the gates of
    an LSTM/GRU cell computed by one matrix product. ``x``: ``(..., n * d)`` → ``n`` × ``(..., d)``."""
    if isinstance(n, Val):
        n = n.value
    size = jnp.shape(x)[-1]
    if size % n:
        raise ValueError(f"multigate: the last axis ({size}) is not divisible into {n} chunks")
    return tuple(jnp.split(x, n, axis=-1))


def rsqrt(x: jax.Array) -> jax.Array:
    r""":math:`1/\sqrt{x}`, lowered to one ``stablehlo.rsqrt``."""
    return lax.rsqrt(jnp.asarray(x))
