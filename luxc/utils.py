"""Recursive pytree utilities, precision converters and ``match_eltype`` (Lux's utilities;
``match_eltype`` lives with the layers that call it, in ``luxc.nn``).

The ``recursive_*`` functions are deprecated, as in Lux since v1.3: each warns
``DeprecationWarning`` and names its ``jax.tree_util`` replacement.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from luxc.nn._eltype import EltypeMismatchError as EltypeMismatchError
from luxc.nn._eltype import match_eltype as match_eltype


def _deprecated(name: str, instead: str) -> None:
    warnings.warn(f"luxc.{name} is deprecated (as in Lux >= 1.3); use {instead}",
                  DeprecationWarning, stacklevel=3)


def recursive_map(f: Any, x: Any, *args: Any) -> Any:
    """``f`` applied leaf-wise over ``x`` and ``args`` (same structure). Deprecated: use
    ``jax.tree_util.tree_map(f, x, *args)``."""
    _deprecated("recursive_map", "jax.tree_util.tree_map(f, x, *args)")
    return jax.tree_util.tree_map(f, x, *args)


def recursive_add_(x: Any, y: Any) -> Any:
    """Leaf-wise ``x + y``; NumPy leaves of ``x`` are updated in place (jax arrays are
    immutable, so those leaves are new arrays). Deprecated: use
    ``jax.tree_util.tree_map(jnp.add, x, y)``."""
    _deprecated("recursive_add_", "jax.tree_util.tree_map(jnp.add, x, y)")

    def add(a: Any, b: Any) -> Any:
        if isinstance(a, np.ndarray) and a.flags.writeable:
            np.add(a, b, out=a, casting="unsafe")
            return a
        return a + b

    return jax.tree_util.tree_map(add, x, y)


def recursive_copyto_(x: Any, y: Any) -> Any:
    """Copy the leaves of ``y`` into ``x``: NumPy leaves in place, jax leaves replaced by
    ``y``'s. Deprecated: use ``jax.tree_util.tree_map(lambda _, b: b, x, y)``."""
    _deprecated("recursive_copyto_", "jax.tree_util.tree_map(lambda a, b: b, x, y)")

    def copy(a: Any, b: Any) -> Any:
        if isinstance(a, np.ndarray) and a.flags.writeable:
            np.copyto(a, np.asarray(b))
            return a
        if isinstance(a, jax.Array | np.ndarray):
            return jnp.asarray(b, dtype=a.dtype)
        raise TypeError(f"recursive_copyto_: cannot copy into an immutable leaf {a!r}")

    return jax.tree_util.tree_map(copy, x, y)


def recursive_make_zero(x: Any) -> Any:
    """Zeros shaped like every leaf of ``x``. Deprecated: use
    ``jax.tree_util.tree_map(jnp.zeros_like, x)``."""
    _deprecated("recursive_make_zero", "jax.tree_util.tree_map(jnp.zeros_like, x)")
    return jax.tree_util.tree_map(jnp.zeros_like, x)


def recursive_make_zero_(x: Any) -> Any:
    """``recursive_make_zero``, zeroing NumPy leaves in place. Deprecated: use
    ``jax.tree_util.tree_map(jnp.zeros_like, x)``."""
    _deprecated("recursive_make_zero_", "jax.tree_util.tree_map(jnp.zeros_like, x)")

    def zero(a: Any) -> Any:
        if isinstance(a, np.ndarray) and a.flags.writeable:
            a.fill(0)
            return a
        return jnp.zeros_like(a)

    return jax.tree_util.tree_map(zero, x)


def _dtype_of(leaf: Any) -> np.dtype:
    if leaf is None or isinstance(leaf, bool):
        return np.dtype(bool)
    return np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else np.dtype(leaf.dtype)


def recursive_eltype(x: Any) -> np.dtype:
    """The element type of the leaves of ``x``, promoted (``bool`` for ``None`` or no leaves, as
    Lux returns ``Bool`` for ambiguous inputs)."""
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        return np.dtype(bool)
    return np.dtype(jnp.result_type(*(_dtype_of(leaf) for leaf in leaves)))


_COMPLEX = {np.dtype(np.float32): np.dtype(np.complex64), np.dtype(np.float64): np.dtype(np.complex128)}


def _convert(x: Any, dtype: Any, name: str) -> Any:
    # As Lux's LuxEltypeAdaptor: floating arrays become `dtype`, complex arrays complex of
    # `dtype`; numbers and every other leaf are left alone.
    dtype = np.dtype(dtype)

    def conv(leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array | np.ndarray):
            return leaf
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(leaf, dtype)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            if dtype not in _COMPLEX:
                raise TypeError(f"{name}: a {leaf.dtype} leaf has no {dtype} complex counterpart "
                                "in JAX (Lux would make it Complex{Float16}); convert the complex "
                                "leaves with f32 or leave them out")
            return jnp.asarray(leaf, _COMPLEX[dtype])
        return leaf

    return jax.tree_util.tree_map(conv, x)


def f16(x: Any) -> Any:
    """Floating-point arrays of ``x`` as float16; integers, numbers and other leaves untouched.
    A complex array is an error: JAX has no half-precision complex type."""
    return _convert(x, jnp.float16, "f16")


def f32(x: Any) -> Any:
    """Floating-point arrays of ``x`` as float32, complex ones as complex64; integers, numbers
    and other leaves untouched.

    >>> import jax.numpy as jnp
    >>> f32({"w": jnp.ones(2, jnp.float16), "n": 3})["w"].dtype
    dtype('float32')
    """
    return _convert(x, jnp.float32, "f32")


def bf16(x: Any) -> Any:
    """Floating-point arrays of ``x`` as bfloat16; integers, numbers and other leaves untouched.
    A complex array is an error: JAX has no bfloat16 complex type."""
    return _convert(x, ml_dtypes.bfloat16, "bf16")


def f64(x: Any) -> Any:
    """Floating-point arrays of ``x`` as float64, complex ones as complex128. Needs 64-bit mode
    in jax."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "f64 needs jax's 64-bit mode: call jax.config.update('jax_enable_x64', True) at "
            "start-up, or set the environment variable JAX_ENABLE_X64=1"
        )
    return _convert(x, jnp.float64, "f64")
