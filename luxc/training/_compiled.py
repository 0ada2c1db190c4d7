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
from luxc.runtime.options import CompileOptions, normalise
from luxc.runtime.stages import CompiledStages, Stage
from luxc.training import _step
from luxc.training._state import ConsumedStateError, TrainState


def _args(kind: Kind, ts: TrainState, data: Any) -> tuple:
    if kind in ("train", "train_steps"):
        return (ts._parameters, ts._optimizer_state, ts.states, data)
    return (ts._parameters, ts.states, data)


def _maker(kind: Kind, obj_fn: Any, ts: TrainState, return_gradients: bool) -> Callable[[], Callable]:
    model, optimizer = ts.model, ts.optimizer
    if kind == "train":
        return lambda: _step.train(_step.reverse_gradients(obj_fn, model), optimizer, return_gradients)
    if kind == "train_steps":
        return lambda: _step.train_scan(_step.reverse_gradients(obj_fn, model), optimizer,
                                        return_gradients)
    if kind == "gradients":
        return lambda: _step.reverse_gradients(obj_fn, model)
    return lambda: _step.evaluate(obj_fn, model)


def _results(kind: Kind, obj_fn: Any, ts: TrainState, out: tuple, steps: int = 1):
    if kind in ("train", "train_steps"):
        ps, opt_state, st, loss, stats, grads = out
        new = ts._derive({"parameters": ps, "optimizer_state": opt_state, "states": st,
                          "step": ts.step + steps, "objective_function": obj_fn})
        return grads, loss, stats, new
    if kind == "gradients":
        grads, loss, st, stats = out
        return grads, loss, stats, ts._derive({"states": st, "objective_function": obj_fn})
    return out


def consumed_error(ts: TrainState, data: Any, caller: str) -> ConsumedStateError | None:
    """The error for an input an earlier in-place call freed, or ``None`` if none is."""
    parts = {"parameters": ts._parameters, "optimizer_state": ts._optimizer_state,
             "states": ts.states, "data": data}
    dead = [name + jax.tree_util.keystr(path)
            for name, tree in parts.items()
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if isinstance(leaf, jax.Array) and leaf.is_deleted()]
    if not dead:
        return None
    return ConsumedStateError(
        f"{caller}: {', '.join(dead[:4])} was donated to an earlier in-place call "
        f"(single_train_step_ or apply_gradients_) and freed; use the TrainState that call "
        f"returned")


def _explained(ts: TrainState, data: Any, caller: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (ValueError, RuntimeError) as e:
        error = consumed_error(ts, data, caller)
        if error is None:
            raise
        raise error from e


def run(kind: Kind, obj_fn: Any, data: Any, ts: TrainState, *, return_gradients: bool = True,
        donate: bool = False, compile_options: CompileOptions | None = None, sync: bool = False,
        caller: str = "single_train_step_", steps: int = 1):
    """One AutoXLA call of the training API; returns what the caller returns."""
    return_gradients = return_gradients and kind in ("train", "train_steps")
    args = _args(kind, ts, data)
    _, out = _explained(ts, data, caller, lambda: compiler.run(
        ts.cache, kind, obj_fn, ts.model, ts.optimizer, args,
        _maker(kind, obj_fn, ts, return_gradients), return_gradients=return_gradients,
        donate=donate, options=compile_options, caller=caller))
    if donate:
        ts.consume(caller, ts.step)
    if sync:
        jax.block_until_ready(out)
    return _results(kind, obj_fn, ts, out, steps)


def update(ts: TrainState, grads: Any, *, donate: bool, caller: str) -> TrainState:
    """The optimiser's update of ``ts`` by ``grads``, as an ordinary cache entry."""
    optimizer = ts.optimizer
    args = (ts._parameters, ts._optimizer_state, grads)
    _, (ps, opt_state) = _explained(ts, grads, caller, lambda: compiler.run(
        ts.cache, "update", None, None, optimizer, args, lambda: _step.update(optimizer),
        donate=donate, caller=caller))
    if donate:
        ts.consume(caller, ts.step)
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

    def _text(self, stage: Stage) -> str:
        return self.executable.as_text(stage)

    def _figures_source(self) -> jax.stages.Compiled:
        return self.executable.compiled

    def __call__(self, ts: TrainState, data: Any, *, sync: bool = False):
        ts.check_alive()
        args = _args(self.kind, ts, data)
        out = _explained(ts, data, "CompiledStep", lambda: self.entry.call(*args))
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
    entry = compiler.compile_entry(ts.cache, key, _args(kind, ts, data),
                                   _maker(kind, obj_fn, ts, return_gradients), "compile_step")
    return CompiledStep(entry)
