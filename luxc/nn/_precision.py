"""AlternatePrecision: a layer run in another floating-point dtype (Lux's
``AlternatePrecision{T}``, ``src/layers/basic.jl``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from luxc.nn._core import AbstractLayer
from luxc.nn._stability import floating_dtype


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    def one(v: Any) -> Any:
        floating = hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating)
        return v.astype(dtype) if floating else v

    return jax.tree_util.tree_map(one, tree)


class AlternatePrecision(AbstractLayer):
    """``layer`` applied to ``x`` cast to ``dtype``, its output cast back to ``x``'s dtype:
    ``y = cast(layer(cast(x, dtype), ps, st), x.dtype)``.

    As Lux, only the input and the output are cast, not ``ps``: jax's type promotion then
    computes e.g. a bfloat16 parameter times a float32 input in float32. The typical use is
    ``AlternatePrecision(jnp.float32, RMSNorm(d))`` in a model trained with
    ``mixed_precision="bf16"`` (Lux's Qwen3 example). ``ps`` and ``st`` are the layer's own
    (Lux's wrapper layer adds no level).

    Args:
        dtype: a floating dtype (``jnp.float32``, ``jnp.bfloat16``, ``"float16"``, ...), Lux's
            ``T``.
        layer: the luxc layer to run.

    >>> import jax, jax.numpy as jnp, luxc
    >>> layer = luxc.nn.AlternatePrecision(jnp.float32, luxc.nn.RMSNorm(4))
    >>> ps, st = luxc.setup(jax.random.key(0), layer)
    >>> layer(jnp.ones((2, 4), jnp.bfloat16), ps, st)[0].dtype
    dtype(bfloat16)
    """

    def __init__(self, dtype: Any, layer: AbstractLayer):
        try:
            self.dtype = jnp.dtype(dtype)
        except TypeError:
            self.dtype = None
        if self.dtype is None or not jnp.issubdtype(self.dtype, jnp.floating):
            raise ValueError(f"AlternatePrecision: dtype must be a floating dtype such as "
                             f"jnp.float32 or jnp.bfloat16; received {dtype!r}")
        if not isinstance(layer, AbstractLayer):
            raise TypeError(f"AlternatePrecision: layer must be a luxc layer; received "
                            f"{type(layer).__name__}")
        self.layer = layer

    def init_parameters(self, key: jax.Array) -> dict:
        return self.layer.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return self.layer.init_states(key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        back = floating_dtype(x)
        y, st = self.layer(_cast(x, self.dtype), ps, st)
        return (y if back is None else _cast(y, back)), st

    def summary(self) -> str:
        return f"AlternatePrecision{{{self.dtype.name}}}({self.layer.summary()})"
