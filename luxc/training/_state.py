"""TrainState: the model, its parameters and state, the optimiser and its state, the step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from luxc.nn._core import AbstractLayer
from luxc.runtime import DEFAULT_MAX_ENTRIES, ExecutableCache
from luxc.training._adjustable import adjustable
from luxc.training._show import show


class ConsumedStateError(RuntimeError):
    """A TrainState (or an array of it) whose buffers an earlier in-place call donated."""


class Donation:
    """Whether a TrainState's parameter and optimiser-state buffers are still its own: the one
    mutable part of a TrainState, set once, by the in-place call that donates them
    (``call`` and the ``step`` it ran at; both ``None`` while the buffers are alive)."""

    __slots__ = ("call", "step")

    def __init__(self) -> None:
        self.call: str | None = None
        self.step: int | None = None


def check_state(ts: Any, fn: str) -> None:
    """``ts`` is a TrainState whose buffers no in-place call has donated; else the error, in
    ``fn``'s name."""
    if not isinstance(ts, TrainState):
        raise TypeError(f"{fn}: ts must be a luxc.TrainState; received {type(ts).__name__}")
    ts.check_alive()


def _owned(tree: Any) -> Any:
    # One on-device copy per array (same device, sharding and commitment: an array setup
    # made may still join one placed elsewhere): donation may free it. A device_put without
    # a target copies without compiling a program per shape as ``x.copy()`` does (8 shapes:
    # 2 ms against 88 ms in a fresh process).
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x, may_alias=False) if isinstance(x, jax.Array)
        else jnp.asarray(x) if isinstance(x, np.ndarray) else x, tree)


@jax.tree_util.register_pytree_node_class
class TrainState:
    """Training state, as Lux's ``TrainState``.

    Fields: ``model``, ``parameters``, ``states``, ``optimizer`` (an optax
    ``GradientTransformation``; one with a constant learning rate is wrapped so that the rate
    is a device scalar, ``optimizer_state[-1]["learning_rate"]``, which ``adjust`` changes),
    ``optimizer_state``, ``step`` (number of parameter updates, a
    host ``int`` so that reading it never waits for the device); internal: ``cache`` (the
    compiled executables, shared by every TrainState derived from this one),
    ``allocator_cache`` (unused on XLA, which pools memory itself) and ``objective_function``
    (the last objective used).

    The TrainState owns its buffers: ``parameters`` and ``states`` are copied once, on their
    device, at construction, so an in-place call (``single_train_step_``) that donates them
    never frees an array the caller still holds. After such a call, reading the old
    TrainState's ``parameters`` or ``optimizer_state`` raises :class:`ConsumedStateError`.

    Args:
        max_cache_entries: how many compiled executables ``cache`` keeps (least recently used
            evicted first; each holds its compiled code, a few MiB for a small model).

    >>> import jax, optax, luxc
    >>> model = luxc.nn.Dense(2, 1)
    >>> ps, st = luxc.setup(jax.random.key(0), model)
    >>> ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    >>> ts.step
    0
    """

    __slots__ = (
        "model", "_parameters", "states", "optimizer", "_optimizer_state", "step", "cache",
        "objective_function", "donation", "_loss_scaling",
    )
    allocator_cache = None  # Lux's field; XLA pools device memory itself

    def __init__(
        self,
        model: AbstractLayer,
        parameters: Any,
        states: Any,
        optimizer: optax.GradientTransformation,
        *,
        max_cache_entries: int = DEFAULT_MAX_ENTRIES,
    ):
        if not isinstance(model, AbstractLayer):
            raise TypeError(f"TrainState: model must be a luxc layer; received {type(model).__name__}")
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise TypeError(
                "TrainState: optimizer must be an optax GradientTransformation (e.g. "
                f"optax.adam(1e-3)); received {type(optimizer).__name__}"
            )
        parameters, states = _owned(parameters), _owned(states)
        # Lux's ReactantOptimiser: the learning rate becomes a device scalar, for adjust.
        optimizer, optimizer_state = adjustable(optimizer, parameters)
        self._set(
            model=model, _parameters=parameters, states=states, optimizer=optimizer,
            _optimizer_state=optimizer_state, step=0,
            cache=ExecutableCache(max_cache_entries), objective_function=None, donation=Donation(),
            _loss_scaling=None,
        )

    @property
    def parameters(self) -> Any:
        if self.donation.call is not None:
            self.check_alive()
        return self._parameters

    @property
    def optimizer_state(self) -> Any:
        if self.donation.call is not None:
            self.check_alive()
        return self._optimizer_state

    @property
    def loss_scale(self) -> jax.Array | None:
        """The dynamic loss scale of ``CompileOptions(mixed_precision="f16")`` training (a
        float32 scalar; ``None`` until an f16 step ran)."""
        return None if self._loss_scaling is None else self._loss_scaling.scale

    def _set(self, **fields: Any) -> None:
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TrainState is immutable: use the TrainState a training call returns")

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields changed (the cache is shared; arrays are not copied)."""
        self.check_alive()
        return self._derive(changes)

    def _derive(self, changes: dict[str, Any]) -> TrainState:
        new = object.__new__(TrainState)
        for k in TrainState.__slots__:
            public = k.lstrip("_")
            object.__setattr__(new, k, changes[public] if public in changes else getattr(self, k))
        object.__setattr__(new, "donation", Donation())
        return new

    def _advanced(self, parameters: Any, optimizer_state: Any, states: Any, steps: int,
                  objective: Any) -> TrainState:
        # _derive for a training step's results, spelled out with the slots' own setters: it
        # runs on every cache hit.
        new = _new(TrainState)
        _SET_MODEL(new, self.model)
        _SET_PARAMETERS(new, parameters)
        _SET_STATES(new, states)
        _SET_OPTIMIZER(new, self.optimizer)
        _SET_OPTIMIZER_STATE(new, optimizer_state)
        _SET_STEP(new, self.step + steps)
        _SET_CACHE(new, self.cache)
        _SET_OBJECTIVE(new, objective)
        _SET_DONATION(new, Donation())
        _SET_LOSS_SCALING(new, self._loss_scaling)
        return new

    def check_alive(self) -> None:
        """Raise ConsumedStateError if an in-place call already donated this state's buffers."""
        if self.donation.call is not None:
            call, step = self.donation.call, self.donation.step
            raise ConsumedStateError(
                f"this TrainState's parameter and optimizer-state buffers were donated to "
                f"{call} (step {step}) and freed; use the TrainState that call returned "
                f"(or the non-donating variant, without the trailing underscore)"
            )

    def consume(self, call: str, step: int) -> None:
        """Mark the buffers as donated by ``call`` at ``step`` (formatted only if misused): the
        TrainState's fields stay as they are; its :class:`Donation` records the call."""
        self.donation.call, self.donation.step = call, step

    def tree_flatten(self):
        children = (self.parameters, self.states, self.optimizer_state, self.step,
                    self._loss_scaling)
        aux = (self.model, self.optimizer, self.cache, self.objective_function)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        new = object.__new__(cls)
        model, optimizer, cache, objective = aux
        ps, st, opt_state, step, scaling = children
        new._set(model=model, _parameters=ps, states=st, optimizer=optimizer,
                 _optimizer_state=opt_state, step=step, cache=cache, objective_function=objective,
                 donation=Donation(), _loss_scaling=scaling)
        return new

    def __repr__(self) -> str:
        """Lux's TrainState printout: model, parameter and state counts, optimiser, step,
        cache and objective, one per line (:mod:`luxc.training._show`)."""
        return show(self)

_new = object.__new__
(_SET_MODEL, _SET_PARAMETERS, _SET_STATES, _SET_OPTIMIZER, _SET_OPTIMIZER_STATE, _SET_STEP, _SET_CACHE,
 _SET_OBJECTIVE, _SET_DONATION, _SET_LOSS_SCALING) = (
    getattr(TrainState, k).__set__ for k in TrainState.__slots__)
