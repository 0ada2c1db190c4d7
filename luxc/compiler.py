"""AutoXLA: the whole step as one compiled program, cached in ``TrainState.cache``.

``compile_step(obj_fn, data, ts)`` traces objective + gradient + optax update into one StableHLO
module (``luxc.training._step``), runs luxc's passes, compiles it with XLA and returns a
:class:`CompiledStep`. The training API (``single_train_step_(AutoXLA(), …)``) goes through
:func:`run`, which keeps one entry per input signature and calls the cached executable directly.
"""

from __future__ import annotations

from typing import Any, Literal

import jax

from ._preferences import preference
from .runtime import CompileOptions, Executable
from .runtime.cache import ExecutableCache, Identity, ProgramKey, Signature
from .runtime.executable import build
from .training import _step
from .training._state import ConsumedStateError, TrainState

Kind = Literal["train", "gradients", "objective"]
_ARG_NAMES = {
    "train": ("parameters", "optimizer_state", "states", "data"),
    "gradients": ("parameters", "states", "data"),
    "objective": ("parameters", "states", "data"),
}


def _step_fn(kind: Kind, obj_fn: Any, ts: TrainState, return_gradients: bool):
    if kind == "train":
        return _step.train(_step.reverse_gradients(obj_fn, ts.model), ts.optimizer, return_gradients)
    if kind == "gradients":
        return _step.reverse_gradients(obj_fn, ts.model)
    return _step.evaluate(obj_fn, ts.model)


def _args(kind: Kind, ts: TrainState, data: Any) -> tuple:
    if kind == "train":
        return (ts.parameters, ts.optimizer_state, ts.states, data)
    return (ts.parameters, ts.states, data)


def _hashable(obj: Any) -> Any:
    try:
        hash(obj)
    except TypeError:
        return Identity(obj)
    return obj


class CompiledStep:
    """A compiled training step (or gradient / objective evaluation), like ``jax.stages.Compiled``.

    ``cs(ts, data)`` runs it and returns what ``single_train_step`` returns:
    ``(grads, loss, stats, new_ts)``; ``as_text(stage)``, ``pass_report``, ``cost_analysis()``
    and ``memory_stats()`` describe it.
    """

    def __init__(self, kind: Kind, executable: Executable, key: ProgramKey, signature: Signature):
        self.kind, self.executable, self.key, self.signature = kind, executable, key, signature

    @property
    def pass_report(self):
        return self.executable.pass_report

    @property
    def compile_seconds(self) -> float:
        return self.executable.compile_seconds

    @property
    def trace_seconds(self) -> float:
        return self.executable.trace_seconds

    def as_text(self, stage: Literal["traced", "optimized", "hlo"] = "optimized") -> str:
        return self.executable.as_text(stage)

    def cost_analysis(self) -> dict[str, float] | None:
        return self.executable.cost_analysis()

    def memory_stats(self) -> dict[str, int] | None:
        return self.executable.memory_stats()

    def __call__(self, ts: TrainState, data: Any, *, sync: bool = False):
        ts.check_alive()
        out = _call(self, ts, data, "CompiledStep")
        if self.key.donate:
            ts.consume("a donating CompiledStep", ts.step)
        if sync:
            jax.block_until_ready(out)
        return _results(self.kind, self.key, ts, out)

    def __repr__(self) -> str:
        rewrites = sum(r.rewrites for r in self.pass_report)
        return (f"CompiledStep(kind={self.kind!r}, passes={[r.name for r in self.pass_report]}, "
                f"rewrites={rewrites}, compile_seconds={self.compile_seconds:.3f})")


def _program_key(kind: Kind, obj_fn: Any, ts: TrainState, return_gradients: bool, donate: bool,
                 options: CompileOptions | None) -> ProgramKey:
    return ProgramKey(kind, _hashable(obj_fn), Identity(ts.model), _hashable(ts.optimizer),
                      return_gradients and kind == "train", donate, options)


def _compile(cache: ExecutableCache, key: ProgramKey, kind: Kind, obj_fn: Any, ts: TrainState,
             data: Any) -> CompiledStep:
    args = _args(kind, ts, data)
    sig = Signature.of(args)
    found = cache.lookup(key, sig)
    if found is not None:
        return found
    cache.check_recompile(key, sig, preference("recompile_check"))
    options = key.compile_options or CompileOptions()
    exe = build(
        _step_fn(kind, obj_fn, ts, key.return_gradients), args, options=options,
        donate_argnums=(0, 1) if key.donate else (), arg_names=_ARG_NAMES[kind][:2],
    )
    cs = CompiledStep(kind, exe, key, sig)
    cache.insert(key, sig, cs, exe.compile_seconds + exe.trace_seconds)
    return cs


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
    _check_options(compile_options)
    if kind not in _ARG_NAMES:
        raise ValueError(f"compile_step: kind must be 'train', 'gradients' or 'objective'; "
                         f"received {kind!r}")
    if donate and kind != "train":
        raise ValueError("compile_step: donate=True applies to kind='train' only (it donates the "
                         "parameters and the optimizer state the step replaces)")
    ts.check_alive()
    key = _program_key(kind, obj_fn, ts, return_gradients, donate, compile_options)
    return _compile(ts.cache, key, kind, obj_fn, ts, data)


def _check_options(options: Any) -> None:
    if options is not None and not isinstance(options, CompileOptions):
        raise TypeError(f"compile_options must be a luxc.CompileOptions or None; "
                        f"received {type(options).__name__}")


def _call(cs: CompiledStep, ts: TrainState, data: Any, caller: str) -> tuple:
    try:
        return cs.executable.call(*_args(cs.kind, ts, data))
    except ValueError as e:
        if "deleted or donated" in str(e) or "has been deleted" in str(e):
            raise _consumed_error(ts, data, caller) from None
        raise


def _consumed_error(ts: TrainState, data: Any, caller: str) -> ConsumedStateError:
    parts = {"parameters": ts.parameters, "optimizer_state": ts.optimizer_state,
             "states": ts.states, "data": data}
    dead = []
    for name, tree in parts.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if isinstance(leaf, jax.Array) and leaf.is_deleted():
                dead.append(name + jax.tree_util.keystr(path))
    return ConsumedStateError(
        f"{caller}: {', '.join(dead[:4]) or 'an input'} was donated to an earlier in-place call "
        f"(single_train_step_ or apply_gradients_) and freed; use the TrainState that call "
        f"returned"
    )


def _results(kind: Kind, key: ProgramKey, ts: TrainState, out: tuple):
    objective = key.objective.obj if isinstance(key.objective, Identity) else key.objective
    if kind == "train":
        ps, opt_state, st, loss, stats, grads = out
        new = ts.replace(parameters=ps, optimizer_state=opt_state, states=st, step=ts.step + 1,
                         objective_function=objective)
        return grads, loss, stats, new
    if kind == "gradients":
        grads, loss, st, stats = out
        return grads, loss, stats, ts.replace(states=st, objective_function=objective)
    return out


def run(kind: Kind, obj_fn: Any, data: Any, ts: TrainState, *, return_gradients: bool = True,
        donate: bool = False, compile_options: CompileOptions | None = None, sync: bool = False,
        caller: str = "single_train_step_"):
    """The AutoXLA path of the training API. Returns what the caller returns."""
    ts.check_alive()
    cache = ts.cache
    fast = (kind, obj_fn, ts.model, ts.optimizer, return_gradients, donate, compile_options)
    try:
        cs = cache.aux.get(fast)
    except TypeError:  # an unhashable objective: the slow path keys it by identity
        cs, fast = None, None
    out = None
    if cs is not None:
        try:
            out = _call(cs, ts, data, caller)
        except (TypeError, ValueError):  # another signature or placement: jax refused to run it
            cs = None
        else:
            cache.hits += 1
    if cs is None:
        _check_options(compile_options)
        key = _program_key(kind, obj_fn, ts, return_gradients, donate, compile_options)
        before = cache.misses
        cs = _compile(cache, key, kind, obj_fn, ts, data)
        if cache.misses == before:
            cache.hits += 1
        if fast is not None:
            cache.aux[fast] = cs
        out = _call(cs, ts, data, caller)
    if donate:
        ts.consume(caller, ts.step)
    if sync:
        jax.block_until_ready(out)
    return _results(kind, cs.key, ts, out)
