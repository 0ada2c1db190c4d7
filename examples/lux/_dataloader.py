"""MLUtils' ``DataLoader`` as the ported tutorials use it: ``partial=false`` batches of arrays
that share their leading (sample) axis, shuffled when given a generator."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np


def data_loader(data: tuple[np.ndarray, ...], batchsize: int, rng: np.random.Generator | None
                ) -> Iterator[tuple[jax.Array, ...]]:
    """``DataLoader(data; batchsize, shuffle=rng is not None, partial=false)``: the arrays of
    ``data`` indexed by the same ``batchsize`` samples, a last short batch dropped."""
    n = len(data[0])
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n - batchsize + 1, batchsize):
        idx = order[start:start + batchsize]
        yield tuple(jnp.asarray(a[idx]) for a in data)
