"""Test inputs drawn with numpy (the pass tests' and the training tests').

``jax.random.normal`` compiles a sampler for every new shape (0.2-1.5 s of CPU each), more than
most of these tests spend on what they check; any values serve, so they come from numpy."""

import jax
import jax.numpy as jnp
import numpy as np


def normal(seed: int, shape: tuple[int, ...], dtype=np.float32) -> jax.Array:
    """Standard normal values of ``shape`` from ``seed``, rounded once to ``dtype``."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))
