"""Scale and Bilinear: Lux's element-wise and bilinear affine maps (``src/layers/basic.jl``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn import _draws
from luxc.nn._core import AbstractLayer, LayerShapeError
from luxc.nn._eltype import match_eltype
from luxc.nn._init import Initializer, activation_name, ones, uniform_fan_in, zeros


def _dims_and_activation(args: tuple) -> tuple[tuple[int, ...], Callable | None]:
    act = args[-1] if args and (callable(args[-1]) or args[-1] is None) else None
    dims = args[:-1] if args and (callable(args[-1]) or args[-1] is None) else args
    if len(dims) == 1 and isinstance(dims[0], tuple | list):
        dims = tuple(dims[0])
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                           for d in dims):
        raise ValueError(f"Scale: dims must be positive ints, then an optional activation, "
                         f"e.g. Scale(3, 4, relu); received {args!r}")
    return tuple(dims), act


class Scale(AbstractLayer):
    r"""Element-wise affine map, :math:`y = \sigma(w \odot x + b)`, ``w`` and ``b`` of shape
    ``dims`` broadcast against the trailing axes of ``x`` (numpy's rules, as Julia's
    broadcasting in Lux: ``Scale(5, 10)`` on ``(10,)`` gives ``(5, 10)``).

    ``Scale(*dims, activation=None, *, use_bias=True, init_weight=None, init_bias=None)``:
    ``Scale(4)``, ``Scale(3, 4, jnp.tanh)`` or ``Scale((3, 4), jnp.tanh)``. In batch-first
    order: Lux's ``Scale(a, b)`` on ``(a, b, N)`` is ``Scale(b, a)`` on ``(N, b, a)``.

    Parameters: ``weight`` (ones by default, as Lux's docstring; Lux's code draws
    ``glorot_uniform``) and ``bias`` (zeros), both of shape ``dims``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> layer = luxc.nn.Scale(2, 3)
    >>> ps, st = luxc.setup(jax.random.key(0), layer)
    >>> layer(jnp.ones((5, 2, 3)), ps, st)[0].shape, ps["weight"].shape
    ((5, 2, 3), (2, 3))
    """

    def __init__(self, *dims_and_activation: Any, activation: Callable | None = None,
                 use_bias: bool = True, init_weight: Initializer | None = None,
                 init_bias: Initializer | None = None, dtype: jnp.dtype = jnp.float32):
        self.dims, act = _dims_and_activation(dims_and_activation)
        if act is not None and activation is not None:
            raise ValueError("Scale: activation given twice, positionally and as activation=")
        self.activation = act or activation
        self.use_bias, self.dtype = use_bias, dtype
        self.init_weight, self.init_bias = init_weight or ones, init_bias or zeros

    def init_parameters(self, key: jax.Array) -> dict:
        kw, kb = _draws.split(key)
        ps = {"weight": self.init_weight(kw, self.dims, self.dtype)}
        if self.use_bias:
            ps["bias"] = self.init_bias(kb, self.dims, self.dtype)
        return ps

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        trailing = zip(reversed(np.shape(x)), reversed(self.dims))
        # A symbolic (export-time) batch size is not an int: it is not checked.
        if not all(g in (1, d) or d == 1 for g, d in trailing if isinstance(g, int)):
            raise LayerShapeError(f"{self.summary()} expects an input whose trailing axes "
                                  f"broadcast with {self.dims}; received {np.shape(x)}")
        x = match_eltype(self, ps, st, x)
        y = x * ps["weight"] + ps["bias"] if self.use_bias else x * ps["weight"]
        return (self.activation(y) if self.activation else y), st

    def summary(self) -> str:
        act = activation_name(self.activation)
        extra = "" if self.use_bias else ", use_bias=False"
        return f"Scale({self.dims}{', ' + act if act else ''}{extra})"


class Bilinear(AbstractLayer):
    r"""Bilinear map of two inputs, :math:`z_o = \sigma(x^\top W_o\, y + b_o)`:
    ``z[..., o] = σ(Σ_ij x[..., i] W[o, i, j] y[..., j] + b[o])``.

    ``Bilinear((in1, in2), out, activation=None, *, use_bias=True, init_weight=None,
    init_bias=None)`` (Lux's ``Bilinear((in1, in2) => out, act)``), or ``Bilinear(in12, out)``
    for ``in1 = in2``. Called on a tuple ``(x, y)`` with ``x (..., in1)`` and ``y (..., in2)``
    (the same leading axes), or on one ``x`` used as both.

    Parameters: ``weight`` of shape ``(out, in1, in2)`` (Lux's layout), U(±1/√in1) as Lux's
    docstring (Lux's code shifts a normal draw instead); ``bias (out,)``, U(±1/√in1).
    Output ``(..., out)``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> layer = luxc.nn.Bilinear((3, 4), 2)
    >>> ps, st = luxc.setup(jax.random.key(0), layer)
    >>> layer((jnp.ones((5, 3)), jnp.ones((5, 4))), ps, st)[0].shape, ps["weight"].shape
    ((5, 2), (2, 3, 4))
    """

    def __init__(self, in_dims: int | tuple[int, int], out_dims: int,
                 activation: Callable | None = None, *, use_bias: bool = True,
                 init_weight: Initializer | None = None, init_bias: Initializer | None = None,
                 dtype: jnp.dtype = jnp.float32):
        pair = (in_dims, in_dims) if isinstance(in_dims, int) else tuple(in_dims)
        if len(pair) != 2 or not all(isinstance(d, int) and d > 0 for d in (*pair, out_dims)):
            raise ValueError(f"Bilinear: expects (in1, in2) or in12, then out, positive ints; "
                             f"received in_dims={in_dims!r}, out_dims={out_dims!r}")
        (self.in1_dims, self.in2_dims), self.out_dims = pair, out_dims
        self.activation, self.use_bias, self.dtype = activation, use_bias, dtype
        self.init_weight = init_weight or uniform_fan_in(self.in1_dims)
        self.init_bias = init_bias or uniform_fan_in(self.in1_dims)

    def init_parameters(self, key: jax.Array) -> dict:
        kw, kb = _draws.split(key)
        shape = (self.out_dims, self.in1_dims, self.in2_dims)
        ps = {"weight": self.init_weight(kw, shape, self.dtype)}
        if self.use_bias:
            ps["bias"] = self.init_bias(kb, (self.out_dims,), self.dtype)
        return ps

    def __call__(self, xy: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        x, y = xy if isinstance(xy, tuple | list) else (xy, xy)
        self._check_features(x, self.in1_dims)
        self._check_features(y, self.in2_dims)
        if np.shape(x)[:-1] != np.shape(y)[:-1]:
            raise LayerShapeError(f"{self.summary()}: x and y need the same leading axes; "
                                  f"received {np.shape(x)} and {np.shape(y)}")
        x, y = match_eltype(self, ps, st, x, y)
        z = jnp.einsum("...i,oij,...j->...o", x, ps["weight"], y)
        if self.use_bias:
            z = z + ps["bias"]
        return (self.activation(z) if self.activation else z), st

    def summary(self) -> str:
        act = activation_name(self.activation)
        extra = "" if self.use_bias else ", use_bias=False"
        return (f"Bilinear(({self.in1_dims}, {self.in2_dims}) => {self.out_dims}"
                f"{', ' + act if act else ''}{extra})")
