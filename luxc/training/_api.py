"""The training API of Lux.jl: compute_gradients, apply_gradients(_), single_train_step(_) and
compute_objective (adjust(_) is in _adjust.py)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from luxc.runtime import CompileOptions
from luxc.runtime.messages._leaf_names import leaf_name
from luxc.training import _compiled
from luxc.training._backends import SUPPORTED, check_backend
from luxc.training._state import TrainState, check_state


def compute_gradients(ad: Any, objective_function: Any, data: Any, ts: TrainState, *,
                      sync: bool = False, compile_options: CompileOptions | None = None):
    """Gradients of ``objective_function`` w.r.t. ``ts.parameters``.

    Returns ``(grads, loss, stats, ts)``; the returned ``ts`` carries the updated model state.
    ``sync`` and ``compile_options`` apply to ``AutoXLA`` only. As in Lux, ``grads`` may be
    aliased by a later call's gradients on some backends: copy them if you keep them.
    """
    check_backend(ad, "compute_gradients")
    check_state(ts, "compute_gradients")
    return ad.gradients(objective_function, data, ts, sync=sync, compile_options=compile_options,
                        caller="compute_gradients")


def apply_gradients(ts: TrainState, grads: Any) -> TrainState:
    """A new TrainState with the optimiser's update applied to the parameters (pure)."""
    check_state(ts, "apply_gradients")
    return _compiled.update(ts, grads, donate=False, caller="apply_gradients")


def apply_gradients_(ts: TrainState, grads: Any) -> TrainState:
    """``apply_gradients`` in place: ``ts``'s parameter and optimiser-state buffers are donated
    (updated in place by XLA) and must not be used again; use the returned TrainState."""
    check_state(ts, "apply_gradients_")
    return _compiled.update(ts, grads, donate=True, caller="apply_gradients_")


def _train_step(ad: Any, obj_fn: Any, data: Any, ts: TrainState, donate: bool,
                return_gradients: bool, sync: bool, compile_options: CompileOptions | None,
                caller: str):
    # Cheap checks first: this runs on every cache hit.
    if not isinstance(ad, SUPPORTED):
        check_backend(ad, caller)
    if type(ts) is not TrainState or ts.donation.call is not None:
        check_state(ts, caller)
    return ad.train(obj_fn, data, ts, donate=donate, return_gradients=return_gradients, sync=sync,
                    compile_options=compile_options, caller=caller)


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
    return _train_step(backend, obj_fn, data, ts, True, return_gradients, sync, compile_options,
                       "single_train_step_")


def single_train_step(backend: Any, obj_fn: Any, data: Any, ts: TrainState, *,
                      return_gradients: bool = True, sync: bool = False,
                      compile_options: CompileOptions | None = None):
    """``single_train_step_`` without donation: ``ts`` stays valid."""
    return _train_step(backend, obj_fn, data, ts, False, return_gradients, sync, compile_options,
                       "single_train_step")


def _leading_axis(batches: Any, caller: str) -> int:
    leaves = jax.tree_util.tree_flatten_with_path(batches)[0]
    sizes = {leaf_name("batches", p): (jnp.shape(x)[0] if jnp.ndim(x) else None) for p, x in leaves}
    if not sizes or None in sizes.values() or len(set(sizes.values())) != 1:
        shown = ", ".join(f"{p}: {n}" for p, n in list(sizes.items())[:4]) or "no arrays"
        raise ValueError(f"{caller}: every leaf of batches must have the same leading axis (one "
                         f"slice per step); received leading sizes {shown}")
    return next(iter(sizes.values()))


def _train_steps(ad: Any, obj_fn: Any, batches: Any, ts: TrainState, *, donate: bool,
                 return_gradients: bool, sync: bool, compile_options: CompileOptions | None,
                 caller: str):
    check_backend(ad, caller)
    check_state(ts, caller)
    steps = _leading_axis(batches, caller)
    return ad.train_steps(obj_fn, batches, ts, steps, donate=donate,
                          return_gradients=return_gradients, sync=sync,
                          compile_options=compile_options, caller=caller)


def train_steps_(backend: Any, obj_fn: Any, batches: Any, ts: TrainState, *,
                 return_gradients: bool = False, sync: bool = False,
                 compile_options: CompileOptions | None = None):
    """``K`` training steps in one call, in place: step ``k`` trains on ``batches``' slice ``k``
    along the leading axis of every leaf (Keras's ``steps_per_execution``). Under ``AutoXLA``
    the K steps are one compiled executable (a ``lax.scan``), so the per-step dispatch cost is
    paid once; the results equal K calls of ``single_train_step_``.

    Args:
        backend: ``AutoXLA()``, ``AutoJAX()`` or ``AutoForwardDiff()``.
        obj_fn: ``obj_fn(model, ps, st, data) -> (loss, new_st, stats)``, called on one slice.
        batches: ``data`` for every step, stacked: leaves of shape ``(K, ...)``.
        return_gradients: ``True`` → also return the last step's gradients.
        sync: ``True`` → return once the device has finished.
        compile_options: a ``luxc.CompileOptions`` (AutoXLA only).

    Returns:
        ``(grads, losses, stats, ts)``: ``grads`` of the last step or ``None``, ``losses`` of
        shape ``(K,)``, ``stats`` stacked along a leading K axis, and ``ts`` with
        ``ts.step`` advanced by K.

    >>> import jax, jax.numpy as jnp, optax, luxc
    >>> model = luxc.nn.Dense(3, 1)
    >>> ps, st = luxc.setup(jax.random.key(0), model)
    >>> ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    >>> batches = (jnp.ones((10, 4, 3)), jnp.zeros((10, 4, 1)))  # 10 steps of batch 4
    >>> _, losses, _, ts = luxc.training.train_steps_(luxc.AutoXLA(), luxc.MSELoss(), batches, ts)
    >>> losses.shape, ts.step
    ((10,), 10)
    """
    return _train_steps(backend, obj_fn, batches, ts, donate=True,
                        return_gradients=return_gradients, sync=sync,
                        compile_options=compile_options, caller="train_steps_")


def train_steps(backend: Any, obj_fn: Any, batches: Any, ts: TrainState, *,
                return_gradients: bool = False, sync: bool = False,
                compile_options: CompileOptions | None = None):
    """``train_steps_`` without donation: ``ts`` stays valid."""
    return _train_steps(backend, obj_fn, batches, ts, donate=False,
                        return_gradients=return_gradients, sync=sync,
                        compile_options=compile_options, caller="train_steps")


def compute_objective(ad: Any, objective_function: Any, data: Any, ts: TrainState, *,
                      sync: bool = False, compile_options: CompileOptions | None = None):
    """Evaluate the objective without gradients: ``(loss, new_st, stats)``.

    Under ``AutoXLA`` it is compiled once and shares ``ts.cache`` and the parameters with the
    training step. For evaluation, pass a TrainState in test mode:
    ``ts.replace(states=luxc.testmode(ts.states))``.
    """
    check_backend(ad, "compute_objective")
    check_state(ts, "compute_objective")
    return ad.objective(objective_function, data, ts, sync=sync, compile_options=compile_options,
                        caller="compute_objective")
