"""The training API's compiled path: AutoXLA's calls and ``compile_step``'s :class:`CompiledStep`.

Each call unpacks the TrainState into arrays, lets ``luxc.compiler`` run the cached executable
(compiling on a miss) and packs the outputs into the results the training API returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from luxc import compiler
from luxc.compiler import Kind
from luxc.runtime.cache import CacheEntry
from luxc.runtime.leaf_names import argument_leaf_name
from luxc.runtime.options import CompileOptions, normalise
from luxc.runtime.stages import CompiledStages, Stage
from luxc.training import _step
from luxc.training._mixed_precision import apply_policy
from luxc.training._state import ConsumedStateError, TrainState


def _args(kind: Kind, ts: TrainState, data: Any) -> tuple:
    if kind in ("train", "train_steps"):
        return (ts._parameters, ts._optimizer_state, ts.states, data)
    return (ts._parameters, ts.states, data)


def make_step(kind: Kind, obj_fn: Any, model: Any, optimizer: Any,
              return_gradients: bool, options: CompileOptions) -> Callable:
    """The pure step a kind of call compiles (called on a cache miss only); the objective
    sees the model under ``options.mixed_precision``'s policy."""
    model = apply_policy(model, options.mixed_precision)
    if kind == "train":
        return _step.train(_step.reverse_gradients(obj_fn, model), optimizer, return_gradients)
    if kind == "train_steps":
        return _step.train_scan(_step.reverse_gradients(obj_fn, model), optimizer, return_gradients)
    if kind == "gradients":
        return _step.reverse_gradients(obj_fn, model)
    if kind == "update":
        return _step.update(optimizer)
    return _step.evaluate(obj_fn, model)


def _results(kind: Kind, obj_fn: Any, ts: TrainState, out: tuple, steps: int = 1):
    if kind == "train" or kind == "train_steps":
        ps, opt_state, st, loss, stats, grads = out
        return grads, loss, stats, ts._advanced(ps, opt_state, st, steps, obj_fn)
    if kind == "gradients":
        grads, loss, st, stats = out
        return grads, loss, stats, ts._derive({"states": st, "objective_function": obj_fn})
    return out


_PARTS = ("parameters", "optimizer_state", "states", "data")


def consumed_error(ts: TrainState, data: Any, caller: str) -> ConsumedStateError | None:
    """The error for an input an earlier in-place call freed, or ``None`` if none is."""
    parts = (ts._parameters, ts._optimizer_state, ts.states, data)
    dead = [argument_leaf_name(path, _PARTS)
            for path, leaf in jax.tree_util.tree_flatten_with_path(parts)[0]
            if isinstance(leaf, jax.Array) and leaf.is_deleted()]
    if not dead:
        return None
    return ConsumedStateError(
        f"{caller}: {', '.join(dead[:4])} was donated to an earlier in-place call "
        f"(single_train_step_ or apply_gradients_) and freed; use the TrainState that call "
        f"returned")


def _raise_if_consumed(ts: TrainState, data: Any, caller: str, error: Exception) -> None:
    consumed = consumed_error(ts, data, caller)
    if consumed is not None:
        raise consumed from error


def run(kind: Kind, obj_fn: Any, data: Any, ts: TrainState, donate: bool, return_gradients: bool,
        sync: bool, compile_options: CompileOptions | None, caller: str, steps: int = 1):
    """One AutoXLA call of the training API; returns what the caller returns (positional
    arguments: this runs on every cache hit)."""
    if kind == "train" or kind == "train_steps":
        args = (ts._parameters, ts._optimizer_state, ts.states, data)
    else:
        args, return_gradients = (ts._parameters, ts.states, data), False
    out = _dispatch(ts, kind, obj_fn, ts.model, args, return_gradients, donate, compile_options,
                    caller, data)
    if sync:
        jax.block_until_ready(out)
    return _results(kind, obj_fn, ts, out, steps)


def _dispatch(ts: TrainState, kind: str, obj_fn: Any, model: Any, args: tuple,
              return_gradients: bool, donate: bool, compile_options: CompileOptions | None,
              caller: str, data: Any) -> Any:
    """Run ``args`` through ``ts``'s cache; a donated input used again is luxc's error."""
    try:
        out = compiler.run(ts.cache, kind, obj_fn, model, ts.optimizer, args, make_step,
                           return_gradients, donate, compile_options, caller)
    except (ValueError, RuntimeError) as e:
        _raise_if_consumed(ts, data, caller, e)
        raise
    if donate:
        ts.consume(caller, ts.step)
    return out


def update(ts: TrainState, grads: Any, *, donate: bool, caller: str) -> TrainState:
    """The optimiser's update of ``ts`` by ``grads``, as an ordinary cache entry."""
    args = (ts._parameters, ts._optimizer_state, grads)
    ps, opt_state = _dispatch(ts, "update", None, None, args, False, donate, None, caller, grads)
    return ts._derive({"parameters": ps, "optimizer_state": opt_state, "step": ts.step + 1})


class CompiledStep(CompiledStages):
    """A compiled training step (or gradient / objective evaluation), like ``jax.stages.Compiled``.

    ``cs(ts, data)`` runs it and returns what ``single_train_step`` returns:
    ``(grads, loss, stats, new_ts)``; ``as_text(stage)``, ``pass_report``, ``cost_analysis()``
    and ``memory_analysis()`` describe it.
    """

    def __init__(self, entry: CacheEntry):
        self.kind: Kind = entry.key.kind
        self.entry, self.executable = entry, entry.executable

    @property
    def pass_report(self):
        return self.executable.pass_report

    @property
    def compile_seconds(self) -> float:
        return self.executable.compile_seconds

    @property
    def trace_seconds(self) -> float:
        return self.executable.trace_seconds

    def _stage_text(self, stage: Stage) -> str:
        return self.executable.as_text(stage)

    def _figures_source(self) -> jax.stages.Compiled:
        return self.executable.compiled

    def __call__(self, ts: TrainState, data: Any, *, sync: bool = False):
        ts.check_alive()
        try:
            out = self.entry.call(*_args(self.kind, ts, data))
        except (ValueError, RuntimeError) as e:
            _raise_if_consumed(ts, data, "CompiledStep", e)
            raise
        if self.entry.key.donate:
            ts.consume("a donating CompiledStep", ts.step)
        if sync:
            jax.block_until_ready(out)
        return _results(self.kind, self.entry.key.described["objective"], ts, out)

    def __repr__(self) -> str:
        rewrites = sum(r.rewrites for r in self.pass_report)
        return (f"CompiledStep(kind={self.kind!r}, passes={[r.name for r in self.pass_report]}, "
                f"rewrites={rewrites}, compile_seconds={self.compile_seconds:.3f})")


_KINDS = ("train", "gradients", "objective")


def compile_step(obj_fn: Any, data: Any, ts: TrainState, *,
                 compile_options: CompileOptions | None = None, return_gradients: bool = True,
                 donate: bool = False, kind: Kind = "train") -> CompiledStep:
    """Trace, optimise and compile one training step for ``data``'s shapes; cached in
    ``ts.cache`` (so a later ``single_train_step(AutoXLA(), …)`` with the same program hits it).

    >>> import jax, jax.numpy as jnp, optax, luxc
    >>> model = luxc.nn.Dense(3, 1)
    >>> ps, st = luxc.setup(jax.random.key(0), model)
    >>> ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    >>> data = (jnp.ones((4, 3)), jnp.zeros((4, 1)))
    >>> cs = luxc.compile_step(luxc.MSELoss(), data, ts)
    >>> grads, loss, stats, ts = cs(ts, data)
    >>> ts.step
    1
    """
    options = normalise(compile_options)
    if kind not in _KINDS:
        raise ValueError(f"compile_step: kind must be 'train', 'gradients' or 'objective'; "
                         f"received {kind!r}")
    if donate and kind != "train":
        raise ValueError("compile_step: donate=True applies to kind='train' only (it donates the "
                         "parameters and the optimizer state the step replaces)")
    ts.check_alive()
    return_gradients = return_gradients and kind == "train"
    key = compiler.program_key(kind, obj_fn, ts.model, ts.optimizer, return_gradients, donate,
                               options)
    entry = compiler.compile_entry(ts.cache, key, _args(kind, ts, data), make_step, "compile_step")
    return CompiledStep(entry)
