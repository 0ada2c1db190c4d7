"""Random inputs for the tests of this directory, drawn by numpy.

``jax.random.normal`` compiles a kernel for every new shape (0.2-0.9 s of CPU each, more than
many of these tests take otherwise), and no test here needs jax's draws rather than any others:
each compares two computations on the same inputs, or checks a property of any input."""

import jax
import jax.numpy as jnp
import numpy as np


def normal(seed: int, shape: tuple[int, ...], dtype=jnp.float32, scale: float = 1.0) -> jax.Array:
    """Normal draws of standard deviation ``scale``, of ``shape`` and ``dtype``, from numpy's
    generator seeded ``seed`` (numpy computes and casts them: no kernel to compile)."""
    draws = scale * np.random.default_rng(seed).standard_normal(shape, np.float32)
    return jax.device_put(draws.astype(jnp.dtype(dtype)))


def one_hot_labels(seed: int, n: int, k: int) -> jax.Array:
    """``n`` one-hot float32 rows of ``k`` classes, the classes drawn uniformly."""
    return jax.device_put(np.eye(k, dtype=np.float32)[np.random.default_rng(seed).integers(0, k, n)])
