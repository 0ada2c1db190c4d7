"""``compile_step``'s :class:`CompiledStep` (a cached entry of the compiled path as an object
like ``jax.stages.Compiled``) and the optimiser update every backend runs compiled.

The compiled path itself, one :class:`~luxc.training._kinds.StepKind` per kind of call, is
:mod:`luxc.training._kinds`.
"""

from __future__ import annotations

from typing import Any, Literal

import jax

from luxc.runtime.caching._executable_cache import CacheEntry
from luxc.runtime.compiling._autotune import AutotuneReport
from luxc.runtime.compiling._options import CompileOptions, normalise
from luxc.runtime.compiling._stages import CompiledStages, Stage
from luxc.runtime.performance._op_profile import OpRecord, profile_executable
from luxc.training._kinds import (
    KINDS,
    UPDATE,
    Program,
    StepKind,
    entry,
    for_options,
    raise_if_consumed,
    run,
)
from luxc.training._state import TrainState


def update(ts: TrainState, grads: Any, *, donate: bool, caller: str) -> TrainState:
    """The optimiser's update of ``ts`` by ``grads``, as an ordinary cache entry."""
    return run(UPDATE, None, grads, ts, donate=donate, caller=caller)


class CompiledStep(CompiledStages):
    """A compiled training step (or gradient / objective evaluation), like ``jax.stages.Compiled``.

    ``cs(ts, data)`` runs it and returns what ``single_train_step`` returns:
    ``(grads, loss, stats, new_ts)``; ``as_text(stage)``, ``pass_report``, ``cost_analysis()``
    and ``memory_analysis()`` describe it.
    """

    def __init__(self, entry: CacheEntry, kind: StepKind):
        self.kind: str = kind.name
        self._step_kind = kind
        self.entry, self.executable = entry, entry.executable

    @property
    def pass_report(self):
        return self.executable.pass_report

    @property
    def autotune_report(self) -> AutotuneReport | None:
        """With ``CompileOptions(autotune=True)``: the candidate kept and every candidate's
        median seconds per step (:class:`~luxc.runtime.compiling._autotune.AutotuneReport`); else ``None``."""
        return self.executable.autotune_report

    @property
    def compile_seconds(self) -> float:
        return self.executable.compile_seconds

    @property
    def trace_seconds(self) -> float:
        return self.executable.trace_seconds

    @property
    def compile_report(self) -> dict[str, float]:
        """Seconds of each phase of this step's compile, in order: ``trace + export``, each
        ``pass <name>``, the module's parse + serialize, ``lowering``, ``XLA compile`` …"""
        return dict(self.executable.timings)

    def profile(self, ts: TrainState, data: Any, *, steps: int = 20) -> list[OpRecord]:
        """The step's HLO ops by time per step, largest first (:class:`OpRecord`: seconds,
        share of the step, kind, the user's source line, the layer). ``ts`` is not consumed."""
        return profile_executable(self.executable, self._step_kind.args(ts, data), steps)

    def _stage_text(self, stage: Stage) -> str:
        return self.executable.as_text(stage)

    def _figures_source(self) -> jax.stages.Compiled:
        return self.executable.compiled

    def __call__(self, ts: TrainState, data: Any, *, sync: bool = False):
        ts.check_alive()
        try:
            out = self.entry.call(*self._step_kind.args(ts, data))
        except (ValueError, RuntimeError) as e:
            raise_if_consumed(ts, data, "CompiledStep", e)
            raise
        if self.entry.key.donate:
            ts.consume("a donating CompiledStep", ts.step)
        if sync:
            jax.block_until_ready(out)
        return self._step_kind.results(ts, self.entry.key.described["objective"], out, 1)

    def __repr__(self) -> str:
        rewrites = sum(r.rewrites for r in self.pass_report)
        return (f"CompiledStep(kind={self.kind!r}, passes={[r.name for r in self.pass_report]}, "
                f"rewrites={rewrites}, compile_seconds={self.compile_seconds:.3f})")


_COMPILABLE = ("train", "gradients", "objective")


def compile_step(obj_fn: Any, data: Any, ts: TrainState, *,
                 compile_options: CompileOptions | None = None, return_gradients: bool = True,
                 donate: bool = False,
                 kind: Literal["train", "gradients", "objective"] = "train") -> CompiledStep:
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
    if kind not in _COMPILABLE:
        raise ValueError(f"compile_step: kind must be 'train', 'gradients' or 'objective'; "
                         f"received {kind!r}")
    if donate and kind != "train":
        raise ValueError("compile_step: donate=True applies to kind='train' only (it donates the "
                         "parameters and the optimizer state the step replaces)")
    ts.check_alive()
    step_kind = for_options(KINDS[kind], options)
    return_gradients = return_gradients and step_kind.returns_gradients
    program = Program(obj_fn, ts.model, ts.optimizer, return_gradients, options)
    found = entry(step_kind, ts.cache, program, step_kind.args(ts, data), donate=donate,
                  caller="compile_step")
    return CompiledStep(found, step_kind)
