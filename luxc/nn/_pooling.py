"""Pooling over the spatial axes of ``(N, *spatial, C)``: windowed (``MaxPool``, ``MeanPool``,
``LPPool``), global (``Global*``: every spatial axis kept with size 1) and adaptive
(``Adaptive*``: the window chosen from the input so that the spatial axes become ``out_size``),
as Lux's ``src/layers/pooling.jl`` and NNlib's ``maxpool``/``meanpool``/``lpnormpool``.

The three reductions over a window :math:`W` (padding contributes zeros, or :math:`-\\infty` to
the max):

.. math::
    \\max_{W} x, \\qquad \\frac{1}{|W|}\\sum_{W} x \\;(|W| = \\mathrm{prod(window)}, padding
    included), \\qquad \\Big(\\sum_{W} x^p\\Big)^{1/p}
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from luxc.nn._conv import (
    Padding,
    padding_string,
    spatial_tuple,
    window_padding,
    window_string,
)
from luxc.nn._core import AbstractLayer, LayerShapeError

_OPS = ("max", "mean", "lp")


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p < math.inf:
        raise ValueError(f"LPPool: p must be a number with 0 < p < inf; received {p!r}")
    return p


def _pool(x: jax.Array, op: str, window: Sequence[int], stride: Sequence[int],
          pad: str | Sequence[tuple[int, int]], dilation: Sequence[int], p: float) -> jax.Array:
    """``op`` over windows of the spatial axes of ``x`` (``(N, *spatial, C)``)."""
    dims, strides = (1, *window, 1), (1, *stride, 1)
    pads = pad if isinstance(pad, str) else ((0, 0), *pad, (0, 0))
    if any(d > 1 for d in dilation):
        return _dilated_pool(x, op, window, stride, pads, dilation, p)
    if op == "max":
        # A Python -inf init is what lets jax recognise the max monoid (and differentiate it).
        return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pads)
    summed = lax.reduce_window(x if op == "mean" else x ** p, 0.0, lax.add, dims, strides, pads)
    return summed / math.prod(window) if op == "mean" else summed ** (1 / p)


def _dilated_pool(x: jax.Array, op: str, window: Sequence[int], stride: Sequence[int],
                  pads: str | Sequence[tuple[int, int]], dilation: Sequence[int],
                  p: float) -> jax.Array:
    """A pool with a dilated window, as the reduction of one strided slice per tap (jax has
    no gradient for a dilated max ``reduce_window``)."""
    span = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    if isinstance(pads, str):
        pads = lax.padtype_to_pads(jnp.shape(x), (1, *span, 1), (1, *stride, 1), pads)
    xp = jnp.pad(x if op != "lp" else x ** p, pads, constant_values=-jnp.inf if op == "max" else 0)
    out = [(n - s) // st + 1 for n, s, st in zip(jnp.shape(xp)[1:-1], span, stride)]
    taps = []
    for tap in itertools.product(*(range(k) for k in window)):
        start = [0, *(t * d for t, d in zip(tap, dilation)), 0]
        limit = [jnp.shape(xp)[0], *(b + st * (o - 1) + 1 for b, st, o in
                                     zip(start[1:-1], stride, out)), jnp.shape(xp)[-1]]
        taps.append(lax.slice(xp, start, limit, (1, *stride, 1)))
    if op == "max":
        return functools.reduce(jnp.maximum, taps)
    summed = functools.reduce(jnp.add, taps)
    return summed / math.prod(window) if op == "mean" else summed ** (1 / p)


class _WindowPool(AbstractLayer):
    _op = "max"

    def __init__(self, window: Sequence[int], *, stride: int | Sequence[int] | None = None,
                 pad: Padding = 0, dilation: int | Sequence[int] = 1, p: float = 2):
        name = type(self).__name__
        self.window = spatial_tuple(window, len(tuple(window)), f"{name}: window", 1)
        n = len(self.window)
        self.stride = self.window if stride is None else spatial_tuple(stride, n, f"{name}: stride", 1)
        self.dilation = spatial_tuple(dilation, n, f"{name}: dilation", 1)
        self.pad = window_padding(pad, self.window, self.dilation, f"{name}: pad")
        self.p = _check_p(p)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n = len(self.window)
        self._check_rank(x, n + 2, f"a (N, {', '.join(['d'] * n)}, C) input")
        return _pool(x, self._op, self.window, self.stride, self.pad, self.dilation, self.p), st

    def summary(self) -> str:
        lp = f", p={self.p}" if self._op == "lp" and self.p != 2 else ""
        return (f"{type(self).__name__}({self.window}{padding_string(self.pad)}"
                f"{window_string('stride', self.stride, self.window)}"
                f"{window_string('dilation', self.dilation, 1)}{lp})")


class MaxPool(_WindowPool):
    """Max pooling: each ``window`` (``stride`` defaults to it, non-overlapping, as Lux) of the
    spatial axes of ``(N, *spatial, C)`` → its maximum. ``pad`` as :class:`Conv`'s (``SamePad()``
    gives ``ceil(n / stride)`` positions); ``dilation`` spaces the window's taps.
    Output size per axis: :math:`\\lfloor (n + lo + hi - d(k - 1) - 1)/s \\rfloor + 1`.

    >>> import jax.numpy as jnp, luxc
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> luxc.nn.MaxPool((2, 2))(x, {}, {})[0][0, :, :, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """

    _op = "max"

    def __init__(self, window: Sequence[int], *, stride: int | Sequence[int] | None = None,
                 pad: Padding = 0, dilation: int | Sequence[int] = 1):
        super().__init__(window, stride=stride, pad=pad, dilation=dilation)


class MeanPool(_WindowPool):
    """Mean pooling: each window → the sum of its elements over ``prod(window)`` (padding counts
    as zeros, as NNlib's ``meanpool``). Arguments as :class:`MaxPool`'s.

    >>> import jax.numpy as jnp, luxc
    >>> luxc.nn.MeanPool((2,))(jnp.array([[[1.0], [3.0], [5.0], [9.0]]]), {}, {})[0][0, :, 0].tolist()
    [2.0, 7.0]
    """

    _op = "mean"

    def __init__(self, window: Sequence[int], *, stride: int | Sequence[int] | None = None,
                 pad: Padding = 0, dilation: int | Sequence[int] = 1):
        super().__init__(window, stride=stride, pad=pad, dilation=dilation)


class LPPool(_WindowPool):
    """Lp-norm pooling (NNlib's ``lpnormpool``): each window → :math:`(\\sum x^p)^{1/p}`, with
    ``0 < p < inf`` (no absolute value, as NNlib: a negative ``x`` with a fractional ``p`` gives
    NaN). Other arguments as :class:`MaxPool`'s.

    >>> import jax.numpy as jnp, luxc
    >>> luxc.nn.LPPool((2,))(jnp.array([[[3.0], [4.0]]]), {}, {})[0].tolist()
    [[[5.0]]]
    """

    _op = "lp"


class _GlobalPool(AbstractLayer):
    _op = "max"

    def __init__(self, *, p: float = 2):
        self.p = _check_p(p)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_rank(x, 3, "a (N, *spatial, C) input with at least one spatial axis")
        axes = tuple(range(1, jnp.ndim(x) - 1))
        if self._op == "max":
            return jnp.max(x, axis=axes, keepdims=True), st
        if self._op == "mean":
            return jnp.mean(x, axis=axes, keepdims=True), st
        return jnp.sum(x ** self.p, axis=axes, keepdims=True) ** (1 / self.p), st

    def summary(self) -> str:
        return f"{type(self).__name__}({f'p={self.p}' if self._op == 'lp' and self.p != 2 else ''})"


class GlobalMaxPool(_GlobalPool):
    """``(N, *spatial, C)`` → ``(N, 1, ..., 1, C)``: the maximum over all spatial positions.

    >>> import jax.numpy as jnp, luxc
    >>> luxc.nn.GlobalMaxPool()(jnp.ones((2, 5, 7, 3)), {}, {})[0].shape
    (2, 1, 1, 3)
    """

    _op = "max"

    def __init__(self) -> None:
        super().__init__()


class GlobalMeanPool(_GlobalPool):
    """``(N, *spatial, C)`` → ``(N, 1, ..., 1, C)``: the mean over all spatial positions."""

    _op = "mean"

    def __init__(self) -> None:
        super().__init__()


class GlobalLPPool(_GlobalPool):
    """``(N, *spatial, C)`` → ``(N, 1, ..., 1, C)``: :math:`(\\sum x^p)^{1/p}` over all spatial
    positions (``p=2`` by default)."""

    _op = "lp"


class _AdaptivePool(AbstractLayer):
    _op = "max"

    def __init__(self, out_size: Sequence[int], *, p: float = 2):
        name = type(self).__name__
        self.out_size = spatial_tuple(out_size, len(tuple(out_size)), f"{name}: out_size", 1)
        self.p = _check_p(p)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n = len(self.out_size)
        self._check_rank(x, n + 2, f"a (N, {', '.join(['d'] * n)}, C) input")
        in_size = tuple(jnp.shape(x)[1:-1])
        if len(in_size) != n or any(i < o for i, o in zip(in_size, self.out_size)):
            raise LayerShapeError(
                f"{self.summary()} needs {n} spatial axes at least as large as {self.out_size}; "
                f"received an input of shape {jnp.shape(x)}")
        # Lux's AdaptivePoolMode: one window and stride for the whole axis.
        stride = tuple(i // o for i, o in zip(in_size, self.out_size))
        window = tuple(i - (o - 1) * s for i, o, s in zip(in_size, self.out_size, stride))
        y = _pool(x, self._op, window, stride, ((0, 0),) * n, (1,) * n, self.p)
        return y, st

    def summary(self) -> str:
        lp = f", p={self.p}" if self._op == "lp" and self.p != 2 else ""
        return f"{type(self).__name__}({self.out_size}{lp})"


class AdaptiveMaxPool(_AdaptivePool):
    """``(N, *in_size, C)`` → ``(N, *out_size, C)`` by max pooling with Lux's window: stride
    ``in // out`` and window ``in - (out - 1) * stride`` per axis (one window for the whole
    axis, not PyTorch's varying ones; equal when ``out`` divides ``in``).

    >>> import jax.numpy as jnp, luxc
    >>> luxc.nn.AdaptiveMaxPool((5, 5))(jnp.ones((2, 10, 10, 3)), {}, {})[0].shape
    (2, 5, 5, 3)
    """

    _op = "max"

    def __init__(self, out_size: Sequence[int]):
        super().__init__(out_size)


class AdaptiveMeanPool(_AdaptivePool):
    """:class:`AdaptiveMaxPool`'s windows, averaged (``MeanPool``)."""

    _op = "mean"

    def __init__(self, out_size: Sequence[int]):
        super().__init__(out_size)


class AdaptiveLPPool(_AdaptivePool):
    """:class:`AdaptiveMaxPool`'s windows, reduced as :class:`LPPool` (``p=2`` by default)."""

    _op = "lp"
