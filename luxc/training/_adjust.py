"""``adjust`` / ``adjust_`` (Lux's ``adjust`` / ``adjust!``): new optimiser hyperparameters
without recompiling, since ``optax.inject_hyperparams`` keeps them in the optimiser state as
device scalars, inputs of the compiled step."""

from __future__ import annotations

from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import optax

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
    if not isinstance(eta, Real) or isinstance(eta, bool):
        raise TypeError(f"{fn}: eta (the learning rate) must be a real number; "
                        f"received {type(eta).__name__}")
    if "learning_rate" in hyperparameters:
        raise TypeError(f"{fn}: the learning rate was given twice, as eta and as learning_rate")
    return {"learning_rate": eta, **hyperparameters}


def _set_hyperparameters(fn: str, states: list, hyperparameters: dict) -> None:
    if not states:
        raise ValueError(
            f"{fn}: the optimizer has fixed hyperparameters. Build it with "
            "optax.inject_hyperparams, e.g. optax.inject_hyperparams(optax.adam)(learning_rate="
            "1e-3), so they live in the optimizer state as device scalars and can change "
            "without recompiling"
        )
    known = set().union(*(s.hyperparams for s in states))
    for name in hyperparameters:
        if name not in known:
            raise ValueError(f"{fn}: the optimizer has no hyperparameter {name!r}; "
                             f"it has {', '.join(sorted(known))}")
    # Every new value is built before any is stored, so a bad one changes nothing. Same
    # dtype, shape and weak type as the old one: the compiled step's signature is unchanged.
    updates = [(s.hyperparams, name, jnp.full_like(s.hyperparams[name], value))
               for s in states for name, value in hyperparameters.items() if name in s.hyperparams]
    for table, name, value in updates:
        table[name] = value


def adjust(ts: TrainState, eta: float | None = None, **hyperparameters: Any) -> TrainState:
    """A new TrainState whose optimiser uses new hyperparameters (Lux's ``adjust``).

    ``adjust(ts, 1e-4)`` sets the learning rate, as Lux's ``adjust(ts, eta)``; keywords set
    any hyperparameter by its optax name (``adjust(ts, learning_rate=1e-4, b1=0.8)``). No
    recompile: hyperparameters are inputs of the compiled step. Needs an optimiser built with
    ``optax.inject_hyperparams``. ``ts`` itself is unchanged.

    >>> import jax.numpy as jnp, optax, luxc
    >>> model = luxc.nn.Dense(2, 1)
    >>> ts = luxc.TrainState(model, *luxc.setup(0, model),
    ...                      optax.inject_hyperparams(optax.adam)(learning_rate=1e-3))
    >>> round(float(adjust(ts, 1e-4).optimizer_state.hyperparams["learning_rate"]), 8)
    0.0001
    """
    check_state(ts, "adjust")
    hyperparameters = _requested("adjust", eta, hyperparameters)
    opt_state = jax.tree_util.tree_map(lambda x: x, ts.optimizer_state)  # fresh containers
    _set_hyperparameters("adjust", _injected_states(opt_state), hyperparameters)
    return ts.replace(optimizer_state=opt_state)


def adjust_(ts: TrainState, eta: float | None = None, **hyperparameters: Any) -> TrainState:
    """``adjust`` in place (Lux's ``adjust!``): changes ``ts``'s optimiser state (and so that of
    every TrainState sharing it) and returns ``ts``. All or nothing: an unknown or invalid
    hyperparameter raises before anything changes."""
    check_state(ts, "adjust_")
    hyperparameters = _requested("adjust_", eta, hyperparameters)
    _set_hyperparameters("adjust_", _injected_states(ts.optimizer_state), hyperparameters)
    return ts
