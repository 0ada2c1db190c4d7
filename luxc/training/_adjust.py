"""``adjust`` / ``adjust_`` (Lux's ``adjust`` / ``adjust!``): new optimiser hyperparameters
without recompiling, since ``optax.inject_hyperparams`` keeps them in the optimiser state as
device scalars, inputs of the compiled step."""

from __future__ import annotations

from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from luxc.training._adjustable import is_adjustable, learning_rates
from luxc.training._state import TrainState, check_state

_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _injected_states(opt_state: Any) -> list:
    found = []

    def visit(node: Any) -> None:
        if isinstance(node, _INJECTED):
            found.append(node)
        if isinstance(node, tuple | list):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(opt_state)
    return found


def _requested(fn: str, eta: Any, hyperparameters: dict) -> dict:
    if eta is None:
        return hyperparameters
    # A 0-d array counts as a number: optax schedules return one (adjust_(ts, schedule(i))).
    real_array = (getattr(eta, "shape", None) == () and
                  np.issubdtype(getattr(eta, "dtype", np.dtype(object)), np.floating))
    if not (isinstance(eta, Real) or real_array) or isinstance(eta, bool):
        raise TypeError(f"{fn}: eta (the learning rate) must be a real number; "
                        f"received {type(eta).__name__}")
    if "learning_rate" in hyperparameters:
        raise TypeError(f"{fn}: the learning rate was given twice, as eta and as learning_rate")
    return {"learning_rate": eta, **hyperparameters}


def _tables(optimizer: Any, opt_state: Any) -> list[dict]:
    """The dicts of device-scalar hyperparameters in ``opt_state``: ``inject_hyperparams``'
    ``hyperparams`` and the learning rate luxc's :func:`adjustable` wrapper appends."""
    tables = [s.hyperparams for s in _injected_states(opt_state)]
    return tables + [opt_state[-1]] if is_adjustable(optimizer) else tables


def _why_fixed(fn: str, optimizer: Any) -> str:
    scales, blockers = learning_rates(optimizer)
    if blockers:
        reason = f"its learning rate is {blockers[0]}, not a number"
    elif len(scales) > 1:
        reason = f"it has {len(scales)} learning rates (optax.scale stages), not one"
    elif scales:
        reason = (f"its one optax.scale stage ({scales[0]!r}) is not a negative number, or its "
                  f"state is not an optax chain's tuple, where luxc keeps the learning rate")
    else:
        reason = "luxc found no constant learning rate (an optax.scale stage) in it"
    return (f"{fn}: this optimizer's hyperparameters cannot change: {reason}; build it with "
            "optax.inject_hyperparams, e.g. optax.inject_hyperparams(optax.adam)(learning_rate="
            "1e-3), so they live in the optimizer state as device scalars")


def _set_hyperparameters(fn: str, optimizer: Any, opt_state: Any, hyperparameters: dict) -> None:
    tables = _tables(optimizer, opt_state)
    if not tables:
        raise ValueError(_why_fixed(fn, optimizer))
    known = set().union(*tables)
    for name in hyperparameters:
        if name in known:
            continue
        if not _injected_states(opt_state):
            raise ValueError(
                f"{fn}: {name} of this optimizer is a constant inside it: luxc makes only the "
                f"learning rate a device scalar; to adjust {name}, build the optimizer with "
                f"optax.inject_hyperparams, e.g. optax.inject_hyperparams(optax.adam)(learning_"
                f"rate=1e-3, {name}=...)")
        raise ValueError(f"{fn}: the optimizer has no hyperparameter {name!r}; "
                         f"it has {', '.join(sorted(known))}")
    # Every new value is built before any is stored, so a bad one changes nothing. Same
    # dtype, shape and weak type as the old one: the compiled step's signature is unchanged.
    updates = [(table, name, jnp.full_like(table[name], value))
               for table in tables for name, value in hyperparameters.items() if name in table]
    for table, name, value in updates:
        table[name] = value


def adjust(ts: TrainState, eta: float | None = None, **hyperparameters: Any) -> TrainState:
    """A new TrainState whose optimiser uses new hyperparameters (Lux's ``adjust``).

    ``adjust(ts, 1e-4)`` sets the learning rate, as Lux's ``adjust(ts, eta)``; keywords set
    any hyperparameter by its optax name (``adjust(ts, learning_rate=1e-4, b1=0.8)``). No
    recompile: hyperparameters are inputs of the compiled step. The learning rate of any optax
    optimiser with a constant one (``optax.adam(1e-3)``, ``optax.chain(optax.clip_by_global_norm
    (1.0), optax.adamw(1e-3))``) can change: the update becomes a fresh optimiser's at ``eta``;
    other hyperparameters need ``optax.inject_hyperparams``. ``ts`` itself is unchanged.

    >>> import jax.numpy as jnp, optax, luxc
    >>> model = luxc.nn.Dense(2, 1)
    >>> ts = luxc.TrainState(model, *luxc.setup(0, model), optax.adam(1e-3))
    >>> round(float(adjust(ts, 1e-4).optimizer_state[-1]["learning_rate"]), 8)
    0.0001
    """
    check_state(ts, "adjust")
    hyperparameters = _requested("adjust", eta, hyperparameters)
    opt_state = jax.tree_util.tree_map(lambda x: x, ts.optimizer_state)  # fresh containers
    _set_hyperparameters("adjust", ts.optimizer, opt_state, hyperparameters)
    return ts.replace(optimizer_state=opt_state)


def adjust_(ts: TrainState, eta: float | None = None, **hyperparameters: Any) -> TrainState:
    """``adjust`` in place (Lux's ``adjust!``): changes ``ts``'s optimiser state (and so that of
    every TrainState sharing it) and returns ``ts``. All or nothing: an unknown or invalid
    hyperparameter raises before anything changes."""
    check_state(ts, "adjust_")
    hyperparameters = _requested("adjust_", eta, hyperparameters)
    _set_hyperparameters("adjust_", ts.optimizer, ts.optimizer_state, hyperparameters)
    return ts
