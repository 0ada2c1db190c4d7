"""Lux's autodiff helpers (``src/autodiff/api.jl``): Jacobian-vector and vector-Jacobian
products and the batched Jacobian, with luxc's AD backends in the roles Lux gives its own.

.. math::  \\mathrm{jvp} = \\frac{\\partial f}{\\partial x}\\, u, \\qquad
           \\mathrm{vjp} = \\left(\\frac{\\partial f}{\\partial x}\\right)^{\\!\\top} u, \\qquad
           J_{b,i,j} = \\frac{\\partial f(x)_{b,i}}{\\partial x_{b,j}}

Which backend computes what follows Lux's tables (``AutoEnzyme`` is ``AutoXLA`` here,
``AutoZygote`` is ``AutoJAX``):

==========================  ===============================  ===========================
function                    Lux                              luxc
==========================  ===============================  ===========================
jacobian_vector_product     AutoForwardDiff, AutoEnzyme      AutoForwardDiff, AutoXLA
vector_jacobian_product     AutoZygote, AutoEnzyme           AutoJAX, AutoXLA
batched_jacobian            AutoForwardDiff, AutoZygote,     AutoForwardDiff, AutoJAX,
                            AutoEnzyme                       AutoXLA
==========================  ===============================  ===========================

``AutoXLA`` compiles the product with ``jax.jit`` when called eagerly; inside a traced
function (an objective that ``AutoXLA`` compiles) every backend is traced into the caller's
program, so the helpers nest: the gradient of a loss built from them is reverse mode over the
product (Lux's nested AD). A ``luxc.StatefulLuxLayer`` ``f`` is called on a copy: its ``st``
is left as it was.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from luxc.nn import StatefulLuxLayer
from luxc.training import AutoForwardDiff, AutoJAX, AutoXLA

_SUPPORTED = {
    "jacobian_vector_product": (AutoForwardDiff, AutoXLA),
    "vector_jacobian_product": (AutoJAX, AutoXLA),
    "batched_jacobian": (AutoForwardDiff, AutoJAX, AutoXLA),
}


def _check(fn: str, ad: Any) -> None:
    allowed = _SUPPORTED[fn]
    if not isinstance(ad, allowed):
        names = " or ".join(f"luxc.{b.__name__}()" for b in allowed)
        raise ValueError(f"{fn} is not implemented for {ad!r} (as in Lux); use {names}")


def _pure(f: Callable) -> Callable:
    # A StatefulLuxLayer keeps the state of its last call: calls made inside the products
    # (with jax's tracers) run on a copy, so f.st stays the caller's.
    if isinstance(f, StatefulLuxLayer):
        return lambda x: StatefulLuxLayer(f.model, f.ps, f.st)(x)
    return f


def _compiled(ad: Any, fn: Callable) -> Callable:
    return jax.jit(fn) if isinstance(ad, AutoXLA) else fn


def jacobian_vector_product(f: Callable, ad: Any, x: Any, u: Any) -> Any:
    """:math:`(\\partial f/\\partial x)\\,u` by forward mode (``jax.jvp``), Lux's
    ``jacobian_vector_product``.

    Args:
        f: a function of one argument (any pytree of arrays).
        ad: ``luxc.AutoForwardDiff()`` or ``luxc.AutoXLA()``.
        x: the point, any pytree of arrays.
        u: the tangent, with ``x``'s structure and shapes.

    Returns:
        The product, with ``f(x)``'s structure and shapes.

    >>> import jax.numpy as jnp, luxc
    >>> luxc.jacobian_vector_product(jnp.sin, luxc.AutoForwardDiff(), jnp.zeros(2), jnp.ones(2))
    Array([1., 1.], dtype=float32)
    """
    _check("jacobian_vector_product", ad)
    f = _pure(f)
    return _compiled(ad, lambda x, u: jax.jvp(f, (x,), (u,))[1])(x, u)


def vector_jacobian_product(f: Callable, ad: Any, x: Any, u: Any) -> Any:
    """:math:`(\\partial f/\\partial x)^\\top u` by reverse mode (``jax.vjp``), Lux's
    ``vector_jacobian_product``.

    Args:
        f: a function of one argument (any pytree of arrays).
        ad: ``luxc.AutoJAX()`` or ``luxc.AutoXLA()``.
        x: the point, any pytree of arrays.
        u: the cotangent, with ``f(x)``'s structure and shapes.

    Returns:
        The product, with ``x``'s structure and shapes.
    """
    _check("vector_jacobian_product", ad)
    f = _pure(f)

    def vjp(x: Any, u: Any) -> Any:
        return jax.vjp(f, x)[1](u)[0]

    return _compiled(ad, vjp)(x, u)


def _check_batched(fn: str, x: Any, y_shape: tuple[int, ...] | None) -> None:
    if not isinstance(x, jax.Array | jnp.ndarray) or jnp.ndim(x) < 2:
        raise ValueError(f"{fn}: x must be an array (batch, features...) with at least 2 "
                         f"dimensions; received shape {jnp.shape(x)}")
    if y_shape is not None and (len(y_shape) < 2 or y_shape[0] != jnp.shape(x)[0]):
        raise ValueError(f"{fn}: f(x) must be an array (batch, outputs...) with x's batch size "
                         f"{jnp.shape(x)[0]} first and at least 2 dimensions; received shape "
                         f"{y_shape}")


def _batched_forward(f: Callable, x: jax.Array, n_out: int) -> jax.Array:
    # One JVP per input feature, the same one-hot tangent in every batch row.
    batch, n_in = x.shape[0], x[0].size
    basis = jnp.broadcast_to(jnp.eye(n_in, dtype=x.dtype)[:, None, :], (n_in, batch, n_in))
    columns = jax.vmap(lambda t: jax.jvp(f, (x,), (t.reshape(x.shape),))[1])(basis)
    return jnp.moveaxis(columns.reshape(n_in, batch, n_out), 0, -1)


def _batched_reverse(f: Callable, x: jax.Array, n_out: int) -> jax.Array:
    # One VJP per output feature, the same one-hot cotangent in every batch row.
    y, pullback = jax.vjp(f, x)
    batch = x.shape[0]
    basis = jnp.broadcast_to(jnp.eye(n_out, dtype=y.dtype)[:, None, :], (n_out, batch, n_out))
    rows = jax.vmap(lambda c: pullback(c.reshape(y.shape))[0])(basis)
    return jnp.moveaxis(rows.reshape(n_out, batch, -1), 0, 1)


def batched_jacobian(f: Callable, ad: Any, x: jax.Array) -> jax.Array:
    """The Jacobian of each batch row of ``f(x)`` with respect to the same row of ``x``, Lux's
    ``batched_jacobian``: ``J[b, i, j] = ∂f(x)[b, i] / ∂x[b, j]`` with the non-batch axes of
    ``f(x)`` and ``x`` flattened (row-major).

    ``f`` must not mix batch rows (a BatchNorm in training mode does): the result is then
    wrong, as Lux warns. Forward mode (``AutoForwardDiff``) pushes one tangent per input
    feature through ``f``, reverse mode (``AutoJAX``, ``AutoXLA``) pulls one cotangent per
    output feature back: pick the backend whose count is smaller.

    Args:
        f: ``(batch, *in_shape) -> (batch, *out_shape)``.
        ad: ``luxc.AutoForwardDiff()``, ``luxc.AutoJAX()`` or ``luxc.AutoXLA()``.
        x: ``(batch, *in_shape)``, at least 2 dimensions.

    Returns:
        ``(batch, prod(out_shape), prod(in_shape))``.

    >>> import jax.numpy as jnp, luxc
    >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    >>> luxc.batched_jacobian(lambda x: x ** 2, luxc.AutoJAX(), x)[1]
    Array([[6., 0.],
           [0., 8.]], dtype=float32)
    """
    _check("batched_jacobian", ad)
    _check_batched("batched_jacobian", x, None)
    f = _pure(f)
    y = jax.eval_shape(f, x)
    _check_batched("batched_jacobian", x, getattr(y, "shape", None))
    n_out = math.prod(y.shape[1:])
    way = _batched_forward if isinstance(ad, AutoForwardDiff) else _batched_reverse
    return _compiled(ad, functools.partial(way, f, n_out=n_out))(x)
