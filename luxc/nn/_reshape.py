"""NoOpLayer, ReshapeLayer and SelectDim: parameter-free layers that only move data
(Lux's ``src/layers/basic.jl``), translated to batch-first, row-major arrays.

A column-major Julia array of size ``(d1, ..., dk, N)`` holds its elements in the same memory
order as a row-major ``(N, dk, ..., d1)`` array: so Lux's dims, read right to left, are
luxc's dims, and Lux's dim ``d`` of a rank-``r`` array is axis ``r - d`` (or ``-d``) here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._core import AbstractLayer, LayerShapeError


class NoOpLayer(AbstractLayer):
    """Returns its input unchanged (any input, arrays or not); no parameters, no state.

    >>> import luxc
    >>> luxc.nn.NoOpLayer()(1, {}, {})
    (1, {})
    """

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        return x, st


class ReshapeLayer(AbstractLayer):
    """Reshapes each sample: ``(N, ...)`` → ``(N, *dims)``, row-major (the batch axis kept).

    Lux's ``ReshapeLayer((d1, ..., dk))`` (output ``(d1, ..., dk, N)``, column-major) is
    ``ReshapeLayer((dk, ..., d1))`` here: the same elements land in the same places of the
    batch-first array. One entry may be ``-1`` (inferred), as in numpy.

    >>> import jax.numpy as jnp, luxc
    >>> luxc.nn.ReshapeLayer((2, 2))(jnp.ones((3, 1, 4)), {}, {})[0].shape
    (3, 2, 2)
    """

    def __init__(self, dims: int | Sequence[int]):
        t = (dims,) if isinstance(dims, int) else tuple(dims)
        if not all(isinstance(d, int) and (d >= 0 or d == -1) for d in t) or t.count(-1) > 1:
            raise ValueError(f"ReshapeLayer: dims must be non-negative ints (at most one -1); "
                             f"received {dims!r}")
        self.dims = t

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_rank(x, 1, "a batch axis first, (N, ...)")
        per_sample = math.prod(x.shape[1:])
        known = math.prod(d for d in self.dims if d != -1)
        fits = per_sample % known == 0 if -1 in self.dims and known else per_sample == known
        if not fits:
            raise LayerShapeError(f"{self.summary()}: a sample of shape {x.shape[1:]} "
                                  f"({per_sample} elements) cannot be reshaped to {self.dims}")
        return jnp.reshape(x, (x.shape[0], *self.dims)), st

    def summary(self) -> str:
        return f"ReshapeLayer(output_dims = (:, {', '.join(map(str, self.dims))}))"


class SelectDim(AbstractLayer):
    """``x`` indexed at ``index`` along axis ``dim``: an int index drops the axis, a sequence
    (list, tuple, range) of indices keeps it (Lux's ``selectdim`` / ``view``).

    ``dim`` is an axis of the batch-first input (0 is the batch axis, negative counts from the
    end) and ``index`` is 0-based (negative counts from the end): Lux's ``SelectDim(d, i)``
    is ``SelectDim(-d, i - 1)`` here, e.g. the last time step of ``(batch, time, features)``
    is ``SelectDim(1, -1)``.

    >>> import jax.numpy as jnp, luxc
    >>> x = jnp.arange(24).reshape(2, 3, 4)
    >>> luxc.nn.SelectDim(1, -1)(x, {}, {})[0].tolist()
    [[8, 9, 10, 11], [20, 21, 22, 23]]
    """

    def __init__(self, dim: int, index: int | Sequence[int]):
        if not isinstance(dim, int):
            raise ValueError(f"SelectDim: dim must be an int axis; received {dim!r}")
        ok = isinstance(index, int) or (isinstance(index, Sequence | range) and all(
            isinstance(i, int) for i in index))
        if not ok or isinstance(index, str):
            raise ValueError(f"SelectDim: index must be an int or a sequence of ints; "
                             f"received {index!r}")
        self.dim = dim
        self.index = index if isinstance(index, int) else tuple(index)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        shape = np.shape(x)
        if not -len(shape) <= self.dim < len(shape):
            raise LayerShapeError(f"{self.summary()}: dim {self.dim} is not an axis of an "
                                  f"input of shape {shape}")
        size = shape[self.dim]
        indices = (self.index,) if isinstance(self.index, int) else self.index
        if not all(-size <= i < size for i in indices):
            raise LayerShapeError(f"{self.summary()}: index {self.index} is outside axis "
                                  f"{self.dim} of size {size} (input shape {shape})")
        if isinstance(self.index, int):
            return jax.lax.index_in_dim(x, self.index % size, self.dim, keepdims=False), st
        return jnp.take(x, jnp.asarray([i % size for i in indices], jnp.int32), axis=self.dim), st

    def summary(self) -> str:
        return f"SelectDim(dim = {self.dim}, index = {self.index})"
