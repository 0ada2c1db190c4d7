"""Export a training step to an artefact directory (``luxc compile``) and load it back.

The exported step has a flat signature, ``step(*state, *data) -> (*state, loss, *stats)``,
where ``state`` is the leaves of ``(parameters, optimizer_state, states)``: a process that
loads it needs neither the model's source nor optax's classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc.checkpoint import statics
from luxc.runtime import CompileOptions
from luxc.runtime import artifact as _artifact
from luxc.runtime.leaf_names import leaf_names
from luxc.training import _step
from luxc.training._state import TrainState

load = _artifact.load
LoadedStep = _artifact.LoadedStep


def describe_objective(obj_fn: Any) -> str:
    """A luxc loss's repr (``MSELoss(agg='mean')``); a function's name and where it is defined
    (``objective (digits.py:66)``: a SPEC file's module name is luxc's, not the user's)."""
    code = getattr(obj_fn, "__code__", None)
    if code is not None:
        return f"{obj_fn.__qualname__} ({Path(code.co_filename).name}:{code.co_firstlineno})"
    return repr(obj_fn)


def describe_optimizer(optimizer: Any, opt_state: Any) -> str:
    """What an optax optimiser is, from what it leaves behind: an optax transformation's repr
    is two function addresses, but its state's classes name the algorithm (``ScaleByAdamState``)
    and ``inject_hyperparams`` states hold the hyperparameters."""
    states: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            hyper = getattr(node, "hyperparams", None)
            if isinstance(hyper, dict):
                values = ", ".join(f"{k}={float(v):g}" for k, v in hyper.items() if np.size(v) == 1)
                states.append(f"{type(node).__name__}({values})")
            elif type(node).__name__ != "EmptyState":
                states.append(type(node).__name__)
        if isinstance(node, tuple | list):
            for child in node:
                visit(child)

    visit(opt_state)
    name = getattr(optimizer.init, "__qualname__", type(optimizer).__name__).split(".<locals>")[0]
    return f"optax {name} (states: {', '.join(states) or 'none'})"


def flat_step(obj_fn: Any, data: Any, ts: TrainState):
    """The step with a flat signature, its state and data leaves, and their layout."""
    state_tree = (ts.parameters, ts.optimizer_state, ts.states)
    state, state_def = jax.tree.flatten(state_tree)
    leaves, data_def = jax.tree.flatten(data)
    leaves = [jnp.asarray(x) for x in leaves]
    train = _step.train(_step.reverse_gradients(obj_fn, ts.model), ts.optimizer, False)
    n = len(state)

    def step(*args: Any):
        ps, opt_state, st = jax.tree.unflatten(state_def, args[:n])
        ps, opt_state, st, loss, stats, _ = train(ps, opt_state, st,
                                                  jax.tree.unflatten(data_def, args[n:]))
        new, new_def = jax.tree.flatten((ps, opt_state, st))
        if new_def != state_def:
            raise ValueError("the step changed the structure of the state; it cannot be "
                             f"exported with a flat signature ({state_def} -> {new_def})")
        return (*new, loss, *jax.tree.leaves(stats))

    stats_shape = jax.eval_shape(step, *state, *leaves)[n + 1:]
    layout = {
        "n_state": n,
        "n_data": len(leaves),
        "state_names": [*leaf_names(ts.parameters, "parameters"),
                        *leaf_names(ts.optimizer_state, "optimizer_state"), *leaf_names(ts.states, "states")],
        "data_names": leaf_names(data, "data"),
        "n_stats": len(stats_shape),
        "statics": statics({"parameters": ts.parameters, "states": ts.states,
                            "optimizer_state": ts.optimizer_state}),
        "step": int(ts.step),
        "model": ts.model.summary(),
        "objective": describe_objective(obj_fn),
        "optimizer": describe_optimizer(ts.optimizer, ts.optimizer_state),
    }
    return step, state, leaves, layout


def export_step(obj_fn: Any, data: Any, ts: TrainState, out: str | Path, *,
                platforms: Sequence[str] | None = None,
                compile_options: CompileOptions | None = None,
                force: bool = False) -> dict[str, Any]:
    """Write the artefact of ``single_train_step_(AutoXLA(), obj_fn, data, ts)`` to ``out``.

    ``platforms`` defaults to this machine's; the executable is compiled for this machine when
    it is one of them. Returns the manifest.
    """
    ts.check_alive()
    _artifact.check_output(out, force)  # before tracing: refuse early, lose nothing
    step, state, leaves, layout = flat_step(obj_fn, data, ts)
    return _artifact.save(out, step, state, leaves, layout=layout,
                          platforms=list(platforms or [jax.default_backend()]),
                          options=compile_options or CompileOptions(), force=force)
