"""AD backends, the role ADTypes.jl plays in Lux. Each backend object owns how every kind of
training call runs on it: ``gradients``, ``train`` (one step), ``train_steps`` (K steps) and
``objective``. The eager backends call the pure step functions of ``_step``; AutoXLA runs them
compiled and cached, one ``StepKind`` of ``_kinds`` each. The optimiser update of every backend is a cached
executable (``_compiled.update``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from luxc.runtime.compiling._options import CompileOptions
from luxc.training import _compiled, _kinds, _step
from luxc.training._state import TrainState


class _Eager:
    """Shared by the backends that run the step op by op."""

    def _gradient_fn(self, obj_fn: Any, model: Any) -> Callable:
        return _step.reverse_gradients(obj_fn, model)

    def gradients(self, obj_fn: Any, data: Any, ts: TrainState, *, sync: bool,
                  compile_options: CompileOptions | None, caller: str):
        grads, loss, st, stats = self._gradient_fn(obj_fn, ts.model)(ts.parameters, ts.states, data)
        out = grads, loss, stats, ts._derive({"states": st, "objective_function": obj_fn})
        if sync:
            jax.block_until_ready(out[:3])
        return out

    def train(self, obj_fn: Any, data: Any, ts: TrainState, *, donate: bool,
              return_gradients: bool, sync: bool, compile_options: CompileOptions | None,
              caller: str):
        grads, loss, stats, new = self.gradients(obj_fn, data, ts, sync=False,
                                                 compile_options=None, caller=caller)
        new = _compiled.update(new, grads, donate=donate, caller=caller)
        if donate:
            ts.consume(caller, ts.step)
        if sync:
            jax.block_until_ready((new.parameters, loss))
        return (grads if return_gradients else None), loss, stats, new

    def train_steps(self, obj_fn: Any, batches: Any, ts: TrainState, steps: int, *, donate: bool,
                    return_gradients: bool, sync: bool, compile_options: CompileOptions | None,
                    caller: str):
        losses, stats, grads = [], [], None
        for i in range(steps):
            batch = jax.tree_util.tree_map(lambda b, i=i: b[i], batches)
            grads, loss, stat, ts = self.train(obj_fn, batch, ts, donate=donate,
                                               return_gradients=return_gradients, sync=False,
                                               compile_options=None, caller=caller)
            losses.append(loss)
            stats.append(stat)
        out = (grads, jnp.stack(losses), jax.tree_util.tree_map(lambda *s: jnp.stack(s), *stats), ts)
        if sync:
            jax.block_until_ready(out[:3])
        return out

    def objective(self, obj_fn: Any, data: Any, ts: TrainState, *, sync: bool,
                  compile_options: CompileOptions | None, caller: str):
        out = _step.evaluate(obj_fn, ts.model)(ts.parameters, ts.states, data)
        if sync:
            jax.block_until_ready(out)
        return out


@dataclass(frozen=True)
class AutoJAX(_Eager):
    """Reverse mode (``jax.value_and_grad``) run op by op, without compiling the step: the
    Zygote analogue, for debugging (print, breakpoints and Python control flow work)."""


@dataclass(frozen=True)
class AutoForwardDiff(_Eager):
    """Forward mode (``jax.jacfwd`` over the flattened parameters): one JVP per parameter
    scalar, so only for small models, as ForwardDiff in Lux."""

    def _gradient_fn(self, obj_fn: Any, model: Any) -> Callable:
        return _step.forward_gradients(obj_fn, model)


@dataclass(frozen=True)
class AutoXLA:
    """The compiled path, Lux's Reactant backend: objective, gradient and optimiser update
    traced into one StableHLO module, rewritten by luxc's passes, compiled by XLA and cached
    in ``TrainState.cache``."""

    def gradients(self, obj_fn: Any, data: Any, ts: TrainState, *, sync: bool,
                  compile_options: CompileOptions | None, caller: str):
        return _kinds.run(_kinds.GRADIENTS, obj_fn, data, ts, sync=sync,
                          compile_options=compile_options, caller=caller)

    # train(obj_fn, data, ts, *, donate, return_gradients, sync, compile_options, caller):
    # bound without a Python frame of its own, as it runs on every cache hit.
    train = staticmethod(functools.partial(_kinds.run, _kinds.TRAIN))

    def train_steps(self, obj_fn: Any, batches: Any, ts: TrainState, steps: int, *, donate: bool,
                    return_gradients: bool, sync: bool, compile_options: CompileOptions | None,
                    caller: str):
        return _kinds.run(_kinds.TRAIN_STEPS, obj_fn, batches, ts, donate=donate,
                          return_gradients=return_gradients, sync=sync,
                          compile_options=compile_options, caller=caller, steps=steps)

    def objective(self, obj_fn: Any, data: Any, ts: TrainState, *, sync: bool,
                  compile_options: CompileOptions | None, caller: str):
        return _kinds.run(_kinds.OBJECTIVE, obj_fn, data, ts, sync=sync,
                          compile_options=compile_options, caller=caller)


# Porting aids, ADTypes' names for the backends in Lux's roles: Reactant and Enzyme compile
# the whole step (AutoXLA); Zygote is reverse mode op by op (AutoJAX).
AutoReactant = AutoXLA
AutoEnzyme = AutoXLA
AutoZygote = AutoJAX

SUPPORTED = (AutoJAX, AutoForwardDiff, AutoXLA)


def check_backend(ad: object, fn: str) -> None:
    if not isinstance(ad, SUPPORTED):
        names = ", ".join(f"luxc.{b.__name__}()" for b in SUPPORTED)
        raise TypeError(f"{fn}: unsupported AD backend {ad!r}; supported backends are {names}")
