"""Embedding: a lookup table of learned vectors indexed by integers (Lux's ``Embedding``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn import _draws
from luxc.nn._core import AbstractLayer, LayerShapeError
from luxc.nn._init import Initializer


def _uniform01(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    # Lux's default ``init_weight=rand32``: U[0, 1) (src/layers/embedding.jl).
    return _draws.uniform(key, shape, dtype)


class Embedding(AbstractLayer):
    r"""Row lookup, :math:`y[\ldots, :] = W[x[\ldots], :]`.

    Args:
        vocab: number of rows (Lux's ``in_dims``); indices are ``0 … vocab-1``.
        dim: length of each vector (Lux's ``out_dims``).
        init_weight: ``init(key, shape, dtype)``; the default is Lux's ``rand32``, U[0, 1)
            (Lux.jl src/layers/embedding.jl).

    Parameters: ``weight`` of shape ``(vocab, dim)``, one row per index (Lux stores
    ``(out_dims, in_dims)`` and reads columns; luxc is batch-first, so the vector of index ``i``
    is row ``i`` and the lookup is one contiguous gather).
    Input: integers of any shape ``S`` → output ``S + (dim,)``.

    An index outside ``[0, vocab)`` is an error when the input is concrete (eager calls).
    Under ``jax.jit`` / the compiled step the indices are not known, and XLA's gather clamps
    them into range (index ``vocab`` reads row ``vocab-1``, ``-1`` reads row 0): check the
    data before it is traced.

    >>> import jax, jax.numpy as jnp, luxc
    >>> layer = luxc.nn.Embedding(10, 4)
    >>> ps, st = luxc.setup(jax.random.key(0), layer)
    >>> y, _ = layer(jnp.array([[1, 2, 3]]), ps, st)
    >>> y.shape
    (1, 3, 4)
    """

    def __init__(self, vocab: int, dim: int, *, init_weight: Initializer | None = None,
                 dtype: jnp.dtype = jnp.float32):
        for name, v in (("vocab", vocab), ("dim", dim)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"Embedding: {name} must be a positive int; received {v!r}")
        self.vocab, self.dim, self.dtype = vocab, dim, dtype
        self.init_weight = init_weight or _uniform01

    def init_parameters(self, key: jax.Array) -> dict:
        return {"weight": self.init_weight(key, (self.vocab, self.dim), self.dtype)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        dt = jnp.result_type(x) if hasattr(x, "dtype") else np.asarray(x).dtype
        if not jnp.issubdtype(dt, jnp.integer):
            raise LayerShapeError(
                f"{self.summary()} expects integer indices; received an input of dtype {dt}"
                " (convert with x.astype('int32'))"
            )
        try:
            host = np.asarray(x)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            host = None  # traced: the values are unknown until the program runs
        if host is not None and host.size and (host.min() < 0 or host.max() >= self.vocab):
            value = host.min() if host.min() < 0 else host.max()
            raise IndexError(
                f"{self.summary()}: index {int(value)} is outside [0, {self.vocab}); "
                f"the vocabulary has {self.vocab} entries"
            )
        # mode="clip" states what XLA's gather does anyway; jnp.take's default would fill NaN.
        return jnp.take(ps["weight"], x, axis=0, mode="clip"), st

    def summary(self) -> str:
        return f"Embedding({self.vocab} => {self.dim})"
