"""A device-scalar learning rate for any optax optimiser (Lux's ``ReactantOptimiser``).

Lux makes every Optimisers.jl rule's hyperparameters device numbers when a TrainState is built
on Reactant (``src/helpers/optimizers.jl``), so ``adjust!`` changes them without recompiling.
An optax optimiser such as ``optax.adam(1e-3)`` keeps its learning rate as a Python constant
inside ``optax.scale(-1e-3)``, so luxc wraps it when the TrainState is built:

.. math::  u_t = \\frac{\\eta_t}{\\eta_0}\\, \\mathrm{opt}(g_t), \\qquad
           \\mathrm{opt}(g_t) = -\\eta_0\\, d_t

where :math:`\\eta_0` is the optimiser's own learning rate (read once from its ``optax.scale``
stage) and :math:`\\eta_t` (``learning_rate``) a float32 device scalar appended to the
optimiser state, ``optimizer_state[-1]["learning_rate"]``. Until ``adjust`` changes it,
:math:`\\eta_t/\\eta_0 = 1` exactly; afterwards the update is :math:`-\\eta_t d_t`, a fresh
optimiser's at :math:`\\eta_t`, whatever sits before the scale (Adam's moments, momentum,
weight decay, ``clip_by_global_norm``), since every optax alias ends in that one scale.

Reading the scale is reading optax's closures (``scale.<locals>.update_fn``'s ``step_size``):
when it is not found exactly once (a schedule, two scales, a hand-written transformation) the
optimiser stays as it is and ``adjust`` says why in one line.
"""

from __future__ import annotations

import functools
import types
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

_MARK = "__luxc_learning_rate__"


def _optax_closure(fn: Any, name: str) -> bool:
    return (isinstance(fn, types.FunctionType) and fn.__qualname__ == f"{name}.<locals>.update_fn"
            and fn.__module__.startswith("optax"))


def _children(node: Any) -> list:
    if isinstance(node, types.FunctionType):
        return [x for c in node.__closure__ or () for x in _contents(c)]
    if isinstance(node, functools.partial):
        return [node.func, *node.args, *node.keywords.values()]
    if isinstance(node, tuple | list):
        return list(node)
    return []


def _contents(cell: types.CellType) -> list:
    try:
        return [cell.cell_contents]
    except ValueError:  # an empty cell (a name assigned after the closure was made)
        return []


def learning_rates(optimizer: Any) -> tuple[list[Any], list[str]]:
    """The constant step sizes of the ``optax.scale`` stages reachable from
    ``optimizer.update`` (``-learning_rate`` each), and the names of the stages that make a
    learning rate impossible to read (``scale_by_schedule``)."""
    scales, blockers, seen, todo = [], [], set(), [optimizer.update]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if _optax_closure(node, "scale"):
            cells = dict(zip(node.__code__.co_freevars, node.__closure__))
            scales.extend(_contents(cells["step_size"]))
        elif _optax_closure(node, "scale_by_schedule"):
            blockers.append("optax.scale_by_schedule (a learning-rate schedule)")
        todo.extend(_children(node))
    return scales, blockers


def _number(x: Any) -> float | None:
    """``x`` as a float if it is a real number or a 0-d concrete array, else ``None``."""
    if isinstance(x, Real) and not isinstance(x, bool):
        return float(x)
    if not (isinstance(x, np.ndarray | jax.Array) and x.ndim == 0
            and np.issubdtype(x.dtype, np.floating)):
        return None
    try:
        return float(x)
    except jax.errors.ConcretizationTypeError:  # a traced value: not a constant
        return None


def is_adjustable(optimizer: Any) -> bool:
    """Whether ``optimizer`` is already wrapped by :func:`adjustable`."""
    return hasattr(getattr(optimizer, "update", None), _MARK)


def _scaled(updates: Any, factor: Any) -> Any:
    return jax.tree_util.tree_map(lambda u: u * factor.astype(u.dtype), updates)


def adjustable(optimizer: Any, params: Any) -> tuple[Any, Any]:
    """``(optimizer, state)``: ``optimizer`` with its learning rate a device scalar appended to
    its (tuple) state, and that state for ``params``; or ``optimizer`` itself and its own state
    when that cannot be done (see the module docstring) or is done already."""
    state = optimizer.init(params)
    if is_adjustable(optimizer) or type(state) is not tuple:
        return optimizer, state
    scales, blockers = learning_rates(optimizer)
    step_size = _number(scales[0]) if len(scales) == 1 and not blockers else None
    if step_size is None or step_size >= 0:
        return optimizer, state
    eta0 = -step_size
    eta0_f32 = jnp.float32(eta0)

    @functools.wraps(optimizer.init)
    def init(params: Any) -> tuple:
        return (*optimizer.init(params), {"learning_rate": jnp.asarray(eta0, jnp.float32)})

    @functools.wraps(optimizer.update)
    def update(updates: Any, state: tuple, params: Any = None, **extra: Any) -> tuple[Any, tuple]:
        rate = state[-1]
        updates, inner = optimizer.update(updates, tuple(state[:-1]), params, **extra)
        return _scaled(updates, rate["learning_rate"] / eta0_f32), (*inner, rate)

    setattr(update, _MARK, eta0)
    return (optax.GradientTransformationExtraArgs(init, update),
            (*state, {"learning_rate": jnp.asarray(eta0, jnp.float32)}))
