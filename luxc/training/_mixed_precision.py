"""Mixed precision as a transformation of the model a step's gradient function calls
(Keras's ``mixed_bfloat16`` policy, torch's autocast, DeepMind's jmp).

``MixedPrecision(model, "bf16")`` is the layer the objective sees inside the compiled step:

* the floating-point parameters and the floating-point model input (the ``x`` of
  ``model(x, ps, st)``) are cast ONCE to the compute dtype (bfloat16 or float16), so the
  forward pass and its backward run in it — dots and convolutions included;
* the model's floating outputs are cast back to float32 at the boundary, so the loss, its
  reductions and the returned loss are float32 (and so is anything else the objective computes
  from them);
* the model state is not cast (BatchNorm's running statistics stay float32), and the new state
  the model returns is cast back to the dtypes of the state it received;
* the parameters outside stay float32 (master weights): the cast's transpose turns the
  bfloat16 cotangents into the float32 gradients handed to the optimiser, whose state therefore
  stays float32 too.

Normalisation statistics are float32 because luxc's BatchNorm and LayerNorm compute them in
float32 whatever their input (``luxc.nn._normalize``). The same wrapper serves ``FromFlax`` and
``FromEquinox`` models: the cast happens at their boundary, like any luxc layer's.

>>> import jax, jax.numpy as jnp, luxc
>>> layer = luxc.nn.Dense(3, 2)
>>> ps, st = luxc.setup(jax.random.key(0), layer)
>>> y, _ = MixedPrecision(layer, "bf16")(jnp.ones((4, 3)), ps, st)
>>> y.dtype  # computed in bfloat16, returned as float32
dtype('float32')
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from luxc.nn._core import AbstractLayer

COMPUTE_DTYPES: dict[str, Any] = {"bf16": jnp.bfloat16, "f16": jnp.float16}
_WIDE = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with every float32/float64 array leaf cast to ``dtype`` (integers, booleans,
    keys and narrower floats unchanged)."""
    def one(x: Any) -> Any:
        return x.astype(dtype) if getattr(x, "dtype", None) in _WIDE else x

    return jax.tree_util.tree_map(one, tree)


def widen(tree: Any) -> Any:
    """``tree`` with every bfloat16/float16 array leaf cast to float32."""
    def one(x: Any) -> Any:
        dt = getattr(x, "dtype", None)
        narrow = dt is not None and jnp.issubdtype(dt, jnp.floating) and dt.itemsize < 4
        return x.astype(jnp.float32) if narrow else x

    return jax.tree_util.tree_map(one, tree)


def _like(new: Any, old: Any) -> Any:
    # The new state keeps the dtypes of the state the model received (same structure), where
    # it can be matched leaf for leaf.
    try:
        return jax.tree_util.tree_map(
            lambda n, o: n.astype(o.dtype) if hasattr(n, "astype") and hasattr(o, "dtype")
            and n.dtype != o.dtype else n, new, old)
    except ValueError:
        return widen(new)


class MixedPrecision(AbstractLayer):
    """``layer`` run in ``policy``'s compute dtype with float32 at its boundary (module
    docstring); ``policy`` is ``"bf16"`` or ``"f16"``."""

    def __init__(self, layer: AbstractLayer, policy: str):
        self.layer, self.policy, self.dtype = layer, policy, COMPUTE_DTYPES[policy]

    def init_parameters(self, key: jax.Array) -> dict:
        return self.layer.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return self.layer.init_states(key)

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        y, new_st = self.layer(cast_floating(x, self.dtype), cast_floating(ps, self.dtype), st)
        return widen(y), _like(new_st, st)

    def summary(self) -> str:
        return f"MixedPrecision({self.layer.summary()}, {self.policy!r})"


def apply_policy(model: AbstractLayer, policy: str | None) -> AbstractLayer:
    """The model a step under ``policy`` (``None``, ``"bf16"``, ``"f16"``) hands its objective."""
    return model if policy is None else MixedPrecision(model, policy)
