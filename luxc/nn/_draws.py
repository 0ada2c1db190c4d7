"""The random draws of ``luxc.setup``: ``jax.random.uniform`` and ``jax.random.split``, the same
bits, compiled faster.

Why: ``setup`` draws every parameter eagerly, and jax compiles one small program for each
distinct shape drawn (threefry's rounds, unrolled) and for each number of keys split. On XLA:CPU
each such program took 0.10-0.15 s to compile with its default fusion emitters: seven of them
were 0.8 s of the 2.8 s a one-block transformer needs before its first step. The same programs
compiled with XLA:CPU's loop emitters (``xla_cpu_use_fusion_emitters=False``) take about half
as long.

Why the values are the same: the program compiled is jax's own ``uniform`` or ``split``, traced
here with the key, the shape and the bounds ``jax.random.uniform`` would pass it; only XLA's code
generator differs, and threefry is integer arithmetic followed by a bit-cast, a subtraction, a
multiplication and an addition, each rounded as IEEE says. ``tests/nn/test_draws.py`` compares
the bits with ``jax.random``'s for every dtype luxc's initialisers draw.

A key that is traced (``setup`` under ``jax.jit``), lives on another device, or runs on another
platform, and every draw under ``jax.disable_jit()``, goes to ``jax.random`` unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# Only XLA:CPU has this option; on another platform the draws use jax.random.
_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def _eager_on_cpu(key: jax.Array) -> bool:
    # Under jax.disable_jit a compiled executable refuses to run: jax.random draws op by op.
    if (isinstance(key, jax.core.Tracer) or not isinstance(key, jax.Array)
            or jax.config.jax_disable_jit):
        return False
    devices = key.devices()
    default = jax.devices()[0]
    return default.platform == "cpu" and devices == {default}


def _config() -> tuple[Any, ...]:
    # What else decides the bits of a draw: the PRNG jax uses for a raw uint32 key, and how
    # threefry lays its counters out.
    return (jax.config.jax_default_prng_impl, jax.config.jax_threefry_partitionable)


@functools.lru_cache(maxsize=256)
def _compiled(build: Callable, static: tuple, avals: tuple, config: tuple) -> Callable:
    del config  # part of the cache key only
    shapes = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in avals]
    return jax.jit(build(*static)).lower(*shapes).compile(_CPU_OPTIONS)


def _run(build: Callable, static: tuple, *args: jax.Array):
    avals = tuple((a.shape, a.dtype) for a in args)
    return _compiled(build, static, avals, _config())(*args)


def _uniform_program(shape: tuple[int, ...], dtype: jnp.dtype) -> Callable:
    return lambda key, low, high: jax.random.uniform(key, shape, dtype, low, high)


def _split_program(n: int) -> Callable:
    return lambda key: tuple(jax.random.split(key, n))


def uniform(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32,
            minval: float = 0.0, maxval: float = 1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bit for bit."""
    if not _eager_on_cpu(key):
        return jax.random.uniform(key, tuple(shape), dtype, minval, maxval)
    dtype = jnp.dtype(dtype)
    # jax.random.uniform converts the bounds to dtype before its jitted program: so do we.
    low, high = jnp.asarray(minval, dtype), jnp.asarray(maxval, dtype)
    return _run(_uniform_program, (tuple(shape), dtype), key, low, high)


def split(key: jax.Array, n: int = 2) -> list[jax.Array]:
    """``list(jax.random.split(key, n))``, bit for bit."""
    if not _eager_on_cpu(key):
        return list(jax.random.split(key, n))
    return list(_run(_split_program, (n,), key))
