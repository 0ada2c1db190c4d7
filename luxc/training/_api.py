"""The training API of Lux.jl: compute_gradients, apply_gradients(_), single_train_step(_) and
compute_objective (adjust(_) is in _adjust.py)."""

from __future__ import annotations

from typing import Any

import jax

from ..runtime import CompileOptions
from . import _step
from ._backends import AutoForwardDiff, AutoXLA, check_backend
from ._state import TrainState


def _check_state(ts: Any, fn: str) -> None:
    if not isinstance(ts, TrainState):
        raise TypeError(f"{fn}: ts must be a luxc.TrainState; received {type(ts).__name__}")
    ts.check_alive()


def _eager_gradients(ad: Any, obj_fn: Any, ts: TrainState) -> Any:
    if isinstance(ad, AutoForwardDiff):
        return _step.forward_gradients(obj_fn, ts.model)
    return _step.reverse_gradients(obj_fn, ts.model)


def compute_gradients(ad: Any, objective_function: Any, data: Any, ts: TrainState, *,
                      sync: bool = False, compile_options: CompileOptions | None = None):
    """Gradients of ``objective_function`` w.r.t. ``ts.parameters``.

    Returns ``(grads, loss, stats, ts)``; the returned ``ts`` carries the updated model state.
    ``sync`` and ``compile_options`` apply to ``AutoXLA`` only. As in Lux, ``grads`` may be
    aliased by a later call's gradients on some backends: copy them if you keep them.
    """
    check_backend(ad, "compute_gradients")
    _check_state(ts, "compute_gradients")
    if isinstance(ad, AutoXLA):
        from ..compiler import run

        return run("gradients", objective_function, data, ts, sync=sync,
                   compile_options=compile_options, caller="compute_gradients")
    grads, loss, st, stats = _eager_gradients(ad, objective_function, ts)(
        ts.parameters, ts.states, data
    )
    return grads, loss, stats, ts.replace(states=st, objective_function=objective_function)


def _jitted_update(ts: TrainState, donate: bool) -> Any:
    key = ("apply_gradients", ts.optimizer, donate)
    fn = ts.cache.aux.get(key)
    if fn is None:
        fn = ts.cache.aux[key] = jax.jit(_step.update(ts.optimizer),
                                         donate_argnums=(0, 1) if donate else ())
    return fn


def apply_gradients(ts: TrainState, grads: Any) -> TrainState:
    """A new TrainState with the optimiser's update applied to the parameters (pure)."""
    _check_state(ts, "apply_gradients")
    ps, opt_state = _jitted_update(ts, donate=False)(ts.parameters, ts.optimizer_state, grads)
    return ts.replace(parameters=ps, optimizer_state=opt_state, step=ts.step + 1)


def apply_gradients_(ts: TrainState, grads: Any) -> TrainState:
    """``apply_gradients`` in place: ``ts``'s parameter and optimiser-state buffers are donated
    (updated in place by XLA) and must not be used again; use the returned TrainState."""
    _check_state(ts, "apply_gradients_")
    ps, opt_state = _jitted_update(ts, donate=True)(ts.parameters, ts.optimizer_state, grads)
    ts.consume("apply_gradients_", ts.step)
    return ts.replace(parameters=ps, optimizer_state=opt_state, step=ts.step + 1)


def _train_step(ad: Any, obj_fn: Any, data: Any, ts: TrainState, *, donate: bool,
                return_gradients: bool, sync: bool, compile_options: CompileOptions | None,
                caller: str):
    check_backend(ad, caller)
    _check_state(ts, caller)
    if isinstance(ad, AutoXLA):
        from ..compiler import run

        return run("train", obj_fn, data, ts, return_gradients=return_gradients, donate=donate,
                   compile_options=compile_options, sync=sync, caller=caller)
    grads, loss, stats, new = compute_gradients(ad, obj_fn, data, ts)
    new = apply_gradients_(new, grads) if donate else apply_gradients(new, grads)
    if donate:
        ts.consume(caller, ts.step)
    ts = new
    if sync:
        jax.block_until_ready((ts.parameters, loss))
    return (grads if return_gradients else None), loss, stats, ts


def single_train_step_(backend: Any, obj_fn: Any, data: Any, ts: TrainState, *,
                       return_gradients: bool = True, sync: bool = False,
                       compile_options: CompileOptions | None = None):
    """One training step, in place (Lux's ``single_train_step!``).

    Computes the gradients and applies the optimiser update; ``ts``'s parameter and
    optimiser-state buffers are donated, so use the returned TrainState from here on.

    Args:
        backend: ``AutoXLA()`` (compiled, cached), ``AutoJAX()`` or ``AutoForwardDiff()``.
        obj_fn: ``obj_fn(model, ps, st, data) -> (loss, new_st, stats)``.
        data: anything ``obj_fn`` takes, typically ``(x, y)``.
        return_gradients: ``False`` → the gradients are not returned (``None``).
        sync: ``True`` → return once the device has finished (safe to time).
        compile_options: a ``luxc.CompileOptions`` (AutoXLA only).

    Returns:
        ``(grads, loss, stats, ts)``.
    """
    return _train_step(backend, obj_fn, data, ts, donate=True, return_gradients=return_gradients,
                       sync=sync, compile_options=compile_options, caller="single_train_step_")


def single_train_step(backend: Any, obj_fn: Any, data: Any, ts: TrainState, *,
                      return_gradients: bool = True, sync: bool = False,
                      compile_options: CompileOptions | None = None):
    """``single_train_step_`` without donation: ``ts`` stays valid."""
    return _train_step(backend, obj_fn, data, ts, donate=False, return_gradients=return_gradients,
                       sync=sync, compile_options=compile_options, caller="single_train_step")


def compute_objective(ad: Any, objective_function: Any, data: Any, ts: TrainState, *,
                      sync: bool = False, compile_options: CompileOptions | None = None):
    """Evaluate the objective without gradients: ``(loss, new_st, stats)``.

    Under ``AutoXLA`` it is compiled once and shares ``ts.cache`` and the parameters with the
    training step. For evaluation, pass a TrainState in test mode:
    ``ts.replace(states=luxc.testmode(ts.states))``.
    """
    check_backend(ad, "compute_objective")
    _check_state(ts, "compute_objective")
    if isinstance(ad, AutoXLA):
        from ..compiler import run

        return run("objective", objective_function, data, ts, sync=sync,
                   compile_options=compile_options, caller="compute_objective")
    out = _step.evaluate(objective_function, ts.model)(ts.parameters, ts.states, data)
    if sync:
        jax.block_until_ready(out)
    return out
