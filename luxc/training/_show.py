"""``print(ts)``: a TrainState as Lux's ``show(io, MIME"text/plain", ts::TrainState)`` prints it
(``src/helpers/training.jl``): the model indented by four spaces, the parameter and state
counts (LuxCore's ``parameterlength`` / ``statelength`` of the arrays held), the optimiser, the
step, the compiled cache and the objective::

    TrainState(
        Chain(
            layer_1 = Dense(2 => 4, relu),  # 12 parameters
            layer_2 = Dense(4 => 1),        # 5 parameters
        ),
        number of parameters: 17
        number of states: 0
        optimizer: optax chain (states: ScaleByAdamState), learning_rate=0.001 (adjustable)
        step: 1
        cache: ExecutableCache(1 hit, 1 miss, 1 entry, 0.21s compiling)
        objective_function: MSELoss
    )
"""

from __future__ import annotations

from typing import Any

import numpy as np

from luxc.nn._core import _count
from luxc.training._adjustable import is_adjustable


def _model_lines(model: Any) -> list[str]:
    # Lux's big_show at indent 4: no totals comment (it follows in the counts), a closing ",".
    lines = [line.split("# Total:")[0].rstrip() for line in repr(model).splitlines()
             if not line.lstrip().startswith("#        plus")]
    code, sep, comment = lines[-1].partition("  #")
    lines[-1] = f"{code},{sep}{comment}"
    return ["    " + line for line in lines]


def _state_names(node: Any, found: list[str]) -> list[str]:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        hyper = getattr(node, "hyperparams", None)
        if isinstance(hyper, dict):
            shown = ", ".join(f"{k}={float(v):g}" for k, v in hyper.items() if np.size(v) == 1)
            found.append(f"{type(node).__name__}({shown})")
        elif type(node).__name__ != "EmptyState":
            found.append(type(node).__name__)
    if isinstance(node, tuple | list):
        for child in node:
            _state_names(child, found)
    return found


def describe_optimizer(optimizer: Any, opt_state: Any) -> str:
    """The optax transformation's name, the state classes that name the algorithm
    (``ScaleByAdamState``) and the learning rate ``adjust`` can change."""
    name = getattr(optimizer.init, "__qualname__", type(optimizer).__name__).split(".<locals>")[0]
    text = f"optax {name} (states: {', '.join(_state_names(opt_state, [])) or 'none'})"
    if is_adjustable(optimizer):
        text += f", learning_rate={float(opt_state[-1]['learning_rate']):g} (adjustable)"
    return text


def _objective_name(obj_fn: Any) -> str:
    return getattr(obj_fn, "__qualname__", None) or type(obj_fn).__name__


def show(ts: Any) -> str:
    """The text of ``print(ts)`` (see the module docstring)."""
    lines = ["TrainState(", *_model_lines(ts.model),
             f"    number of parameters: {_count(ts.parameters)}",
             f"    number of states: {_count(ts.states)}",
             f"    optimizer: {describe_optimizer(ts.optimizer, ts.optimizer_state)}",
             f"    step: {ts.step}",
             f"    cache: ExecutableCache({ts.cache.info()})"]
    if ts.objective_function is not None:
        lines.append(f"    objective_function: {_objective_name(ts.objective_function)}")
    return "\n".join([*lines, ")"])
