"""Export a training step to an artifact directory (``luxc compile``) and load it back.

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
from jax import export as jax_export

from luxc.checkpoint import statics
from luxc.nn import testmode
from luxc.runtime import CompileOptions, Manifest
from luxc.runtime.artifacts import _artifact
from luxc.runtime.messages._leaf_names import leaf_names
from luxc.training._mixed_precision import initial_loss_scaling
from luxc.training._show import describe_optimizer as describe_optimizer
from luxc.training._state import TrainState
from luxc.training._step import train_step

load = _artifact.load
LoadedStep = _artifact.LoadedStep


def describe_objective(obj_fn: Any) -> str:
    """A luxc loss's repr (``MSELoss(agg='mean')``); a function's name and where it is defined
    (``objective (digits.py:66)``: a SPEC file's module name is luxc's, not the user's)."""
    code = getattr(obj_fn, "__code__", None)
    if code is not None:
        return f"{obj_fn.__qualname__} ({Path(code.co_filename).name}:{code.co_firstlineno})"
    return repr(obj_fn)


def flat_step(obj_fn: Any, data: Any, ts: TrainState, options: CompileOptions | None = None):
    """The step with a flat signature, its state and data leaves, and their layout; under
    ``mixed_precision="f16"`` the state holds the loss scaling after the optimiser state."""
    opt_arg: Any = ts.optimizer_state
    options = options or CompileOptions()
    opt_names = leaf_names(ts.optimizer_state, "optimizer_state")
    if options.scales_loss:
        scaling = ts._loss_scaling if ts._loss_scaling is not None else initial_loss_scaling()
        opt_arg = (ts.optimizer_state, scaling)
        opt_names += [f"loss_scaling.{f}" for f in scaling._fields]
    state_tree = (ts.parameters, opt_arg, ts.states)
    state, state_def = jax.tree.flatten(state_tree)
    leaves, data_def = jax.tree.flatten(data)
    leaves = [jnp.asarray(x) for x in leaves]
    train = train_step(obj_fn, ts.model, ts.optimizer, False, options)
    n = len(state)
    stat_names: list[str] = []  # filled while tracing: the stats' names, for logs

    def step(*args: Any):
        ps, opt_state, st = jax.tree.unflatten(state_def, args[:n])
        ps, opt_state, st, loss, stats, _ = train(ps, opt_state, st,
                                                  jax.tree.unflatten(data_def, args[n:]))
        new, new_def = jax.tree.flatten((ps, opt_state, st))
        if new_def != state_def:
            raise ValueError("the step changed the structure of the state; it cannot be "
                             f"exported with a flat signature ({state_def} -> {new_def})")
        stat_names[:] = leaf_names(stats, "stats")
        return (*new, loss, *jax.tree.leaves(stats))

    stats_shape = jax.eval_shape(step, *state, *leaves)[n + 1:]
    layout = {
        "n_state": n,
        "n_data": len(leaves),
        "state_names": [*leaf_names(ts.parameters, "parameters"), *opt_names,
                        *leaf_names(ts.states, "states")],
        "data_names": leaf_names(data, "data"),
        "n_stats": len(stats_shape),
        "stat_names": list(stat_names),
        "statics": statics({"parameters": ts.parameters, "states": ts.states,
                            "optimizer_state": ts.optimizer_state}),
        "step": int(ts.step),
        "model": ts.model.summary(),
        "model_summary": repr(ts.model),  # Lux's multi-line display, for luxc inspect
        "objective": describe_objective(obj_fn),
        "optimizer": describe_optimizer(ts.optimizer, ts.optimizer_state),
    }
    return step, state, leaves, layout


def flat_forward(ts: TrainState, data: Any) -> tuple[Any, list[Any], dict[str, Any]] | None:
    """The model's forward pass in test mode with a flat signature,
    ``forward(*parameters, *states, x) = leaves(model(x, ps, testmode(st))[0])``, its abstract
    arguments with ``x`` shaped like ``data[0]`` but a symbolic batch axis ``b``, and its
    manifest entry; ``None`` when ``data[0]`` is not one batch-first array."""
    if not isinstance(data, tuple | list) or not data or np.ndim(data[0]) == 0 or \
            not hasattr(data[0], "dtype"):
        return None
    x = jnp.asarray(data[0])
    ps_leaves, ps_def = jax.tree.flatten(ts.parameters)
    st_leaves, st_def = jax.tree.flatten(testmode(ts.states))
    n_p, model = len(ps_leaves), ts.model
    if len(st_leaves) != len(jax.tree.leaves(ts.states)):
        return None  # the flag is a leaf here: the step's state leaves would not line up

    def forward(*args: Any):
        ps = jax.tree.unflatten(ps_def, args[:n_p])
        y, _ = model(args[-1], ps, jax.tree.unflatten(st_def, args[n_p:-1]))
        return tuple(jax.tree.leaves(y))

    (b,) = jax_export.symbolic_shape("b")
    args = [*ps_leaves, *st_leaves, jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype)]
    entry = {"n_parameters": n_p, "n_states": len(st_leaves),
             "input": {"shape": list(x.shape[1:]), "dtype": str(x.dtype)}}
    return forward, args, entry


def flat_evaluate(obj_fn: Any, ts: TrainState, data: Any
                  ) -> tuple[Any, list[Any], dict[str, Any]] | None:
    """The objective without an update, in test mode, with a flat signature,
    ``evaluate(*parameters, *states, *data) = (loss, *stats)`` of
    ``obj_fn(model, ps, testmode(st), data)``, every data array's batch axis the symbol ``b``
    (any number of samples); ``None`` when a data array has no batch axis."""
    leaves, data_def = jax.tree.flatten(data)
    if not leaves or any(np.ndim(x) == 0 for x in leaves):
        return None
    ps_leaves, ps_def = jax.tree.flatten(ts.parameters)
    st_leaves, st_def = jax.tree.flatten(testmode(ts.states))
    n_p, n_s, model = len(ps_leaves), len(st_leaves), ts.model
    if n_s != len(jax.tree.leaves(ts.states)):
        return None

    def evaluate(*args: Any):
        ps = jax.tree.unflatten(ps_def, args[:n_p])
        st = jax.tree.unflatten(st_def, args[n_p:n_p + n_s])
        loss, _, stats = obj_fn(model, ps, st, jax.tree.unflatten(data_def, args[n_p + n_s:]))
        return (loss, *jax.tree.leaves(stats))

    (b,) = jax_export.symbolic_shape("b")
    xs = [jnp.asarray(x) for x in leaves]
    args = [*ps_leaves, *st_leaves, *(jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype)
                                     for x in xs)]
    entry = {"n_parameters": n_p, "n_states": n_s,
             "inputs": [{"shape": list(x.shape[1:]), "dtype": str(x.dtype)} for x in xs]}
    return evaluate, args, entry


def export_step(obj_fn: Any, data: Any, ts: TrainState, out: str | Path, *,
                platforms: Sequence[str] | None = None,
                compile_options: CompileOptions | None = None,
                force: bool = False) -> Manifest:
    """Write the artifact of ``single_train_step_(AutoXLA(), obj_fn, data, ts)`` to ``out``,
    with the model's forward pass in test mode for ``luxc predict`` (:func:`flat_forward`) and
    the objective without an update for ``luxc run --eval-data`` (:func:`flat_evaluate`).

    ``platforms`` defaults to this machine's; the executable is compiled for this machine when
    it is one of them. With ``CompileOptions(autotune=True)`` the step is tuned on this
    machine first (:mod:`luxc.runtime.compiling._autotune`): the artifact holds the kept candidate's
    options, and its manifest's ``"autotune"`` every candidate's time. Returns the manifest
    written (:class:`luxc.runtime.Manifest`).
    """
    ts.check_alive()
    _artifact.check_output(out, force)  # before tracing: refuse early, lose nothing
    options = compile_options or CompileOptions()
    autotune = None
    if options.autotune:  # timed here, as training runs it; the artifact gets the kept options
        from luxc.training._compiled import compile_step

        report = compile_step(obj_fn, data, ts, compile_options=options).autotune_report
        options, autotune = report.chosen_options(options), report.as_dict()
    step, state, leaves, layout = flat_step(obj_fn, data, ts, options)
    return _artifact.save(out, step, state, leaves, layout=layout,
                          platforms=list(platforms or [jax.default_backend()]),
                          options=options, force=force, forward=flat_forward(ts, data),
                          evaluate=flat_evaluate(obj_fn, ts, data), autotune=autotune)
