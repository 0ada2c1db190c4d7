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

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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


class LossScaling(NamedTuple):
    """Dynamic loss scaling's state (torch's GradScaler, jmp's DynamicLossScale): the
    ``scale`` (float32), the finite steps since it last changed, and the updates the last
    compiled call skipped (int32 scalars)."""

    scale: jax.Array
    finite_steps: jax.Array
    skipped: jax.Array


INITIAL_SCALE = 2.0**15
# Finite steps after which the scale doubles (GradScaler's growth_interval); read when a step
# is traced, so a test may lower it before compiling.
GROWTH_INTERVAL = 2000


def initial_loss_scaling() -> LossScaling:
    return LossScaling(jnp.float32(INITIAL_SCALE), jnp.int32(0), jnp.int32(0))


def _next(scaling: LossScaling, finite: jax.Array) -> LossScaling:
    count = scaling.finite_steps + 1
    grow = count >= GROWTH_INTERVAL
    scale = jnp.where(finite, jnp.where(grow, scaling.scale * 2, scaling.scale), scaling.scale / 2)
    return LossScaling(scale.astype(jnp.float32),
                       jnp.where(finite & ~grow, count, 0).astype(jnp.int32),
                       scaling.skipped + (~finite).astype(jnp.int32))


def loss_scaled_train(gradients_of: Callable[[Any], Callable], optimizer: Any,
                      return_gradients: bool) -> Callable:
    """A training step with dynamic loss scaling: ``(ps, (opt_state, scaling), st, data) ->
    (ps, (opt_state, scaling), st, loss, stats, grads | None)``.

    ``gradients_of(objective_scale)`` is the gradient function of the objective multiplied by
    ``objective_scale``. The gradients of ``scale · loss`` are divided by ``scale`` (a power of
    two: exact); if any is not finite the update is skipped — parameters, optimiser state and
    model state returned unchanged — and the scale halved; after ``GROWTH_INTERVAL`` finite
    steps in a row it doubles. The returned loss is the unscaled float32 loss.
    """
    def step(ps: Any, opt_and_scaling: Any, st: Any, data: Any):
        opt_state, scaling = opt_and_scaling
        grads, loss, new_st, stats = gradients_of(scaling.scale)(ps, st, data)
        grads = jax.tree_util.tree_map(lambda g: g / scaling.scale, grads)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, new_opt = optimizer.update(grads, opt_state, ps)
        new_ps = optax.apply_updates(ps, updates)

        def keep(new: Any, old: Any) -> Any:
            return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)

        out_st = keep(new_st, st) if jax.tree.structure(new_st) == jax.tree.structure(st) else new_st
        return (keep(new_ps, ps), (keep(new_opt, opt_state), _next(scaling, finite)), out_st,
                loss / scaling.scale, stats, grads if return_gradients else None)

    return step
