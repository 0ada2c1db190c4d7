"""The training step as pure functions of arrays, shared by every backend.

``obj_fn(model, ps, st, data) -> (loss, new_st, stats)`` is the objective contract (Lux's).
From it this module builds

* ``gradients(ps, st, data) -> (grads, loss, new_st, stats)``   (reverse or forward mode)
* ``train(ps, opt_state, st, data) -> (ps, opt_state, new_st, loss, stats, grads | None)``
* ``train_scan(ps, opt_state, st, batches)``: ``train`` over the leading axis of ``batches``
* ``evaluate(ps, st, data) -> (loss, new_st, stats)``

AutoJAX calls them directly; AutoXLA traces them into one StableHLO module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from luxc.nn._core import AbstractLayer
from luxc.runtime.compiling._options import CompileOptions
from luxc.training._microbatch import accumulate
from luxc.training._mixed_precision import apply_policy, loss_scaled_train


class ObjectiveFunction(Protocol):
    def __call__(self, model: AbstractLayer, ps: Any, st: Any, data: Any) -> tuple[Any, Any, Any]:
        ...


class ObjectiveError(TypeError):
    """The objective function broke the ``(loss, new_st, stats)`` contract."""


def check_objective(obj_fn: Any) -> None:
    """A loss given by name (``"mse"``) or any other non-callable fails when the step is built,
    in the user's terms, rather than as ``'str' object is not callable`` inside jax's trace."""
    if not callable(obj_fn):
        raise ObjectiveError(
            f"the objective must be a function obj_fn(model, ps, st, data) -> (loss, new_state, "
            f"stats) or a luxc loss object such as luxc.MSELoss() or luxc.CrossEntropyLoss(); "
            f"received the {type(obj_fn).__name__} {obj_fn!r}"
        )


def evaluate_objective(obj_fn: ObjectiveFunction, model: AbstractLayer, ps: Any, st: Any,
                       data: Any) -> tuple[jax.Array, Any, Any]:
    out = obj_fn(model, ps, st, data)
    name = getattr(obj_fn, "__name__", type(obj_fn).__name__)
    if not (isinstance(out, tuple) and len(out) == 3):
        got = f"a tuple of length {len(out)}" if isinstance(out, tuple) else type(out).__name__
        raise ObjectiveError(
            f"objective function {name} must return (loss, new_state, stats); received {got}"
        )
    loss, new_st, stats = out
    if jnp.ndim(loss) != 0:
        raise ObjectiveError(
            f"objective function {name} must return a scalar loss; received shape {jnp.shape(loss)}"
            " (aggregate it, e.g. with agg='mean')"
        )
    return loss, new_st, stats


def check_differentiable(loss: Any, obj_fn: Any) -> None:
    """A loss the gradient can flow through: a real floating-point jax value. A Python or
    numpy number is a constant to jax (its gradients are silently zero), and jax refuses an
    integer or complex one only in its own terms ("grad requires real-valued outputs")."""
    name = getattr(obj_fn, "__name__", type(obj_fn).__name__)
    if not isinstance(loss, jax.Array):
        raise ObjectiveError(
            f"objective function {name} returned the loss as a {type(loss).__name__} "
            f"({loss!r}), a constant with zero gradients; compute it from the parameters ps "
            f"with jax operations (jnp.mean(...), not float(...) or .item())")
    if not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ObjectiveError(
            f"objective function {name} returned a {loss.dtype} loss; gradients need a real "
            f"floating-point loss: compute it in floating point (e.g. "
            f"jnp.mean(jnp.square(y_pred - y)), or loss.astype(jnp.float32))")


def reverse_gradients(obj_fn: ObjectiveFunction, model: AbstractLayer) -> Callable:
    check_objective(obj_fn)

    def gradients(ps: Any, st: Any, data: Any):
        def f(p):
            loss, new_st, stats = evaluate_objective(obj_fn, model, p, st, data)
            check_differentiable(loss, obj_fn)
            return loss, (new_st, stats)

        (loss, (new_st, stats)), grads = jax.value_and_grad(f, has_aux=True)(ps)
        return grads, loss, new_st, stats

    return gradients


def forward_gradients(obj_fn: ObjectiveFunction, model: AbstractLayer) -> Callable:
    check_objective(obj_fn)

    def gradients(ps: Any, st: Any, data: Any):
        flat, unravel = ravel_pytree(ps)
        if not jnp.issubdtype(flat.dtype, jnp.inexact):
            raise ObjectiveError("AutoForwardDiff needs floating-point parameters")

        def f(v):
            loss, new_st, stats = evaluate_objective(obj_fn, model, unravel(v), st, data)
            check_differentiable(loss, obj_fn)
            return loss, (loss, new_st, stats)

        g, (loss, new_st, stats) = jax.jacfwd(f, has_aux=True)(flat)
        return unravel(g), loss, new_st, stats

    return gradients


def step_model(model: AbstractLayer, options: CompileOptions) -> AbstractLayer:
    """The model the objective of a compiled step sees: ``model`` under
    ``options.mixed_precision``'s policy."""
    return apply_policy(model, options.mixed_precision)


def gradient_fn(obj_fn: ObjectiveFunction, model: AbstractLayer, options: CompileOptions) -> Callable:
    """The gradient function every compiled kind that differentiates uses
    (``gradients(ps, st, data) -> (grads, loss, new_st, stats)``), built from the compile
    options: each option that changes how gradients are computed composes here."""
    return accumulate(reverse_gradients(obj_fn, step_model(model, options)), options.microbatches)


def update(optimizer: optax.GradientTransformation) -> Callable:
    def apply(ps: Any, opt_state: Any, grads: Any):
        updates, opt_state = optimizer.update(grads, opt_state, ps)
        return optax.apply_updates(ps, updates), opt_state

    return apply


def train(gradients: Callable, optimizer: optax.GradientTransformation,
          return_gradients: bool) -> Callable:
    apply = update(optimizer)

    def step(ps: Any, opt_state: Any, st: Any, data: Any):
        grads, loss, new_st, stats = gradients(ps, st, data)
        ps, opt_state = apply(ps, opt_state, grads)
        return ps, opt_state, new_st, loss, stats, (grads if return_gradients else None)

    return step


def train_scan(gradients: Callable, optimizer: optax.GradientTransformation,
               return_gradients: bool) -> Callable:
    """``K`` training steps, one per slice of ``batches``' leading axis, as one ``lax.scan``:
    ``(ps, opt_state, st, batches) -> (ps, opt_state, st, losses[K], stats[K, ...], grads | None)``
    with the last step's gradients."""
    return scan(train(gradients, optimizer, return_gradients=True), return_gradients)


def scan(one: Callable, return_gradients: bool) -> Callable:
    """A training step ``one(ps, opt_state, st, batch)`` (returning its gradients) run over the
    leading axis of ``batches`` as one ``lax.scan`` (``train_scan``'s body)."""

    def steps(ps: Any, opt_state: Any, st: Any, batches: Any):
        def body(carry, batch):
            ps, opt_state, st, _ = carry
            ps, opt_state, st, loss, stats, grads = one(ps, opt_state, st, batch)
            return (ps, opt_state, st, grads if return_gradients else None), (loss, stats)

        init = (ps, opt_state, st, jax.tree_util.tree_map(jnp.zeros_like, ps)
                if return_gradients else None)
        (ps, opt_state, st, grads), (losses, stats) = jax.lax.scan(body, init, batches)
        return ps, opt_state, st, losses, stats, grads

    return steps


def evaluate(obj_fn: ObjectiveFunction, model: AbstractLayer) -> Callable:
    check_objective(obj_fn)

    def run(ps: Any, st: Any, data: Any):
        return evaluate_objective(obj_fn, model, ps, st, data)

    return run


def scaled_objective(obj_fn: ObjectiveFunction, scale: jax.Array) -> Callable:
    """``obj_fn`` with its loss multiplied by ``scale`` (dynamic loss scaling)."""
    def scaled(model: AbstractLayer, ps: Any, st: Any, data: Any):
        loss, new_st, stats = evaluate_objective(obj_fn, model, ps, st, data)
        return loss * scale, new_st, stats

    return scaled


def train_step(obj_fn: ObjectiveFunction, model: AbstractLayer, optimizer: Any,
               return_gradients: bool, options: CompileOptions) -> Callable:
    """The training step ``(ps, opt, st, data) -> (ps, opt, st, loss, stats, grads | None)``
    built from the compile options; under ``mixed_precision="f16"``, ``opt`` is
    ``(optimizer_state, LossScaling)`` and the loss is scaled dynamically
    (``loss_scaled_train``) around the same :func:`gradient_fn`."""
    if not options.scales_loss:
        return train(gradient_fn(obj_fn, model, options), optimizer, return_gradients)

    def gradients_of(scale: jax.Array) -> Callable:
        return gradient_fn(scaled_objective(obj_fn, scale), model, options)

    return loss_scaled_train(gradients_of, optimizer, return_gradients)
