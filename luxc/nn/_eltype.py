"""``match_eltype``: what a layer does with an input whose element type differs from its
parameters' (Lux's ``match_eltype.jl``), governed by the ``eltype_mismatch_handling``
preference. Dense, Conv, BatchNorm and LayerNorm call it on their input, as in Lux."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc._preferences import preference
from luxc.nn._core import AbstractLayer
from luxc.nn._stability import floating_dtype


class EltypeMismatchError(TypeError):
    """``match_eltype`` found a mismatch while ``eltype_mismatch_handling`` is ``"error"``."""


# Lux's six pairs, (parameters' dtype, input's kind); every other combination passes as is.
_PAIRS = {("float64", "Integer"), ("float32", "Float64"), ("float32", "Integer"),
          ("float16", "Float64"), ("float16", "Float32"), ("float16", "Integer")}
_warned: set[tuple[str, str, str]] = set()


def _kind(dt: np.dtype) -> str:
    if jnp.issubdtype(dt, jnp.integer) or dt == np.bool_:
        return "Integer"
    return {np.dtype(np.float64): "Float64", np.dtype(np.float32): "Float32"}.get(dt, str(dt))


def match_eltype(layer: AbstractLayer, ps: Any, st: Any, *args: Any) -> Any:
    """Maybe match the element type of ``args`` to that of the layer's parameters and states.

    The ``eltype_mismatch_handling`` preference decides, as in Lux: ``"none"`` (default)
    returns ``args`` unchanged; ``"warn"`` warns (once per kind of mismatch);
    ``"convert"`` warns and converts; ``"error"`` raises :class:`EltypeMismatchError`. Only
    Lux's six pairs act (parameters ← input): float64 ← integer; float32 ← float64, integer;
    float16 ← float64, float32, integer. Anything else (e.g. bfloat16 input to float32
    parameters) passes unchanged. Returns the single argument, or a tuple for several.

    >>> import jax, jax.numpy as jnp, luxc
    >>> layer = luxc.nn.Dense(2, 2)
    >>> ps, st = luxc.setup(jax.random.key(0), layer)
    >>> luxc.match_eltype(layer, ps, st, jnp.ones(2, jnp.int32)).dtype  # preference "none"
    dtype('int32')
    """
    mode = preference("eltype_mismatch_handling")
    target = None if mode == "none" else floating_dtype((ps, st))
    out = args if target is None else tuple(_match(layer, target, a, mode) for a in args)
    return out[0] if len(out) == 1 else out


def _match(layer: AbstractLayer, target: np.dtype, arg: Any, mode: str) -> Any:
    def one(leaf: Any) -> Any:
        if not hasattr(leaf, "dtype"):
            return leaf
        pair = (str(target), _kind(np.dtype(leaf.dtype)))
        if pair not in _PAIRS:
            return leaf
        message = (f"{layer.summary()}: layer with {target} parameters and states received "
                   f"{leaf.dtype} input (eltype_mismatch_handling={mode!r})")
        if mode == "error":
            raise EltypeMismatchError(message)
        if (mode, *pair) not in _warned:
            _warned.add((mode, *pair))
            warnings.warn(message + ("; converting" if mode == "convert" else ""), stacklevel=5)
        return jnp.asarray(leaf, target) if mode == "convert" else leaf

    return jax.tree_util.tree_map(one, arg)
