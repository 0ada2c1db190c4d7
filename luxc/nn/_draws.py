"""The random draws of ``luxc.setup``: ``jax.random.uniform`` and ``jax.random.split``, the same
bits, compiled faster.

Why: ``setup`` draws every parameter eagerly, and jax compiles one small program for each
distinct shape drawn (threefry's rounds, unrolled) and for each number of keys split. On XLA:CPU
each such program took 0.10-0.15 s to compile with its default fusion emitters: seven of them
were 0.8 s of the 2.8 s a one-block transformer needs before its first step. The same programs
compiled with XLA:CPU's loop emitters (``xla_cpu_use_fusion_emitters=False``) take about half
as long.

Why the values are the same: the program compiled is jax's own ``uniform`` or ``split``, traced
with the arguments ``jax.random`` would trace it with (the bounds as the weakly typed scalars a
Python number becomes), except that a draw of shape ``s`` is drawn as ``prod(s)`` elements in a
row and reshaped: threefry counts the elements of a draw in row-major order (both of
``jax_threefry_partitionable``'s layouts), so element ``i`` gets the same bits either way. Only
XLA's code generator differs, and threefry is integer arithmetic followed by a bit-cast, a
subtraction, a multiplication and an addition, each rounded as IEEE says.
``tests/nn/test_draws.py`` compares the bits with ``jax.random``'s.

Only the plain case takes this path: a typed key (``jax.random.key``) on the default CPU device,
not traced; Python numbers as bounds; a static shape; a dtype jax keeps as asked; no
``jax.disable_jit``, default device or mesh in force. Everything else — and a split into more
than :data:`MAX_SPLIT` keys, whose one-output-per-key program compiles slowly — goes to
``jax.random`` unchanged, with its own checks and errors.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# Only XLA:CPU has this option; on another platform the draws use jax.random.
_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
MAX_SPLIT = 32


def _plain_key(key: Any) -> bool:
    if (not isinstance(key, jax.Array) or isinstance(key, jax.core.Tracer)
            or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        return False
    # A compiled executable keeps the device and mesh of its first call, and refuses to run
    # under jax.disable_jit: any of these contexts is jax.random's to handle.
    if (jax.config.jax_disable_jit or jax.config.jax_default_device is not None
            or not jax.sharding.get_abstract_mesh().empty):
        return False
    default = jax.devices()[0]
    return (default.platform == "cpu" and isinstance(key.sharding, jax.sharding.SingleDeviceSharding)
            and key.devices() == {default})


def _static_ints(values: Any) -> tuple[int, ...] | None:
    try:
        return tuple(operator.index(v) for v in values)
    except TypeError:  # an int, a traced or otherwise non-static entry
        return None


@functools.lru_cache(maxsize=64)
def _compiled(build: Callable, static: tuple, avals: tuple, layout: bool) -> Callable:
    del layout  # part of the cache key only: threefry's counters follow it
    args = [jax.ShapeDtypeStruct(shape, dtype, weak_type=weak) for shape, dtype, weak in avals]
    return jax.jit(build(*static)).lower(*args).compile(_CPU_OPTIONS)


def _run(build: Callable, static: tuple, *args: jax.Array):
    avals = tuple((a.shape, a.dtype, getattr(a, "weak_type", False)) for a in args)
    return _compiled(build, static, avals, jax.config.jax_threefry_partitionable)(*args)


def _uniform_program(shape: tuple[int, ...], dtype: jnp.dtype) -> Callable:
    # Drawn flat, then reshaped: threefry numbers the elements in row-major order in both of
    # its layouts, so the bits are the same, and XLA:CPU compiles the flat program 5-6x faster
    # for a kernel of rank 3 or more (0.63-0.77 s against 0.11-0.15 s for (5, 5, 6, 16),
    # (3, 3, 64, 64) and (7, 9, 11); the same for a matrix).
    flat = (math.prod(shape),)
    return lambda key, low, high: jax.random.uniform(key, flat, dtype, low, high).reshape(shape)


def _split_program(n: int) -> Callable:
    return lambda key: tuple(jax.random.split(key, n))


def uniform(key: jax.Array, shape: Sequence[int], dtype: Any = float,
            minval: float = 0.0, maxval: float = 1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bit for bit."""
    static_shape = _static_ints(shape) if isinstance(shape, Sequence) else None
    plain = (_plain_key(key) and static_shape is not None and dtype is not None
             and all(type(b) in (float, int) for b in (minval, maxval)))
    if plain and jax.dtypes.canonicalize_dtype(dtype) == jnp.dtype(dtype):
        # The bounds as jit sees a Python number: a weakly typed scalar, converted to dtype
        # inside the program (jnp.asarray(minval, dtype) would round differently).
        low, high = jnp.asarray(minval), jnp.asarray(maxval)
        if not isinstance(low, jax.core.Tracer):  # a tracer: a concrete key closed over by jit
            return _run(_uniform_program, (static_shape, jnp.dtype(dtype)), key, low, high)
    return jax.random.uniform(key, shape, dtype, minval, maxval)


def split(key: jax.Array, n: int = 2) -> list[jax.Array]:
    """``list(jax.random.split(key, n))``, bit for bit."""
    if type(n) is int and 0 <= n <= MAX_SPLIT and _plain_key(key):
        return list(_run(_split_program, (n,), key))
    return list(jax.random.split(key, n))
