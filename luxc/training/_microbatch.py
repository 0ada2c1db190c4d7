"""Gradient accumulation inside one compiled step (``CompileOptions(microbatches=k)``).

``accumulate(gradients, k)`` turns a gradient function
``gradients(ps, st, data) -> (grads, loss, new_st, stats)`` into one that splits the leading
axis of every leaf of ``data`` into ``k`` equal parts, runs ``gradients`` on each part in turn
(``lax.scan``: one part's activations live at a time) and returns the mean of the ``k`` losses,
statistics and gradients. For a loss that is a mean over the batch (every luxc loss with
``agg="mean"``) the mean of the parts' gradients is the full batch's gradient exactly (up to
float rounding); a summed loss gives 1/k of it.

The model state is carried from one part to the next: a ``BatchNorm`` in training mode
normalises each part with that part's own statistics (not the full batch's) and updates its
running statistics k times, once per part, as k smaller steps would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def check_divisible(data: Any, k: int) -> None:
    """A ``ValueError`` naming the first leaf of ``data`` whose leading axis ``k`` does not
    divide (``data[0]``, its shape and ``k``)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
        shape = np.shape(leaf)
        if not shape or shape[0] % k:
            raise ValueError(
                f"CompileOptions(microbatches={k}): data{jax.tree_util.keystr(path)} has shape "
                f"{tuple(shape)}, whose leading (batch) axis is not divisible by {k}; use a batch "
                f"size that is a multiple of {k} or another microbatches")


def accumulate(gradients: Callable, k: int) -> Callable:
    """``gradients`` over ``k`` microbatches of ``data``, averaged (see the module docstring).

    >>> import jax.numpy as jnp
    >>> def grads(w, st, data):  # the gradient of mean((x * w - y)^2) with respect to w
    ...     x, y = data
    ...     r = x * w - y
    ...     return jnp.mean(2 * r * x), jnp.mean(r ** 2), st, {}
    >>> data = (jnp.arange(4.0), jnp.zeros(4))
    >>> float(accumulate(grads, 2)(1.0, {}, data)[0]) == float(grads(1.0, {}, data)[0])
    True
    """
    if k == 1:
        return gradients

    def accumulated(ps: Any, st: Any, data: Any):
        check_divisible(data, k)
        parts = jax.tree.map(lambda a: jnp.reshape(a, (k, a.shape[0] // k, *a.shape[1:])), data)

        def one(carry: tuple[Any, Any], part: Any):
            total, st = carry
            grads, loss, st, stats = gradients(ps, st, part)
            return (jax.tree.map(jnp.add, total, grads), st), (loss, stats)

        zeros = jax.tree.map(jnp.zeros_like, ps)
        (total, st), (losses, stats) = lax.scan(one, (zeros, st), parts)
        mean = lambda a: jnp.mean(a, axis=0) if jnp.issubdtype(a.dtype, jnp.inexact) else a[-1]
        return (jax.tree.map(lambda g: g / k, total), jnp.mean(losses, axis=0), st,
                jax.tree.map(mean, stats))

    return accumulated
