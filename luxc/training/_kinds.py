"""The kinds of compiled call, one :class:`StepKind` record each, and the one way a call runs.

A kind says everything that differs between ``train``, ``train_steps``, ``gradients``,
``objective`` and ``update``: its name (part of the program key), its arguments' names (for
recompile reasons and donation warnings), which arguments an in-place call donates, how its
arguments come out of a TrainState (``args(ts, data)``), how its pure step is built from the
program (``build(program)``, on a cache miss only) and how its outputs become the training
API's result (``results(ts, objective, out, steps)``). A new kind is one record.

:func:`run` is the compiled path of every call, in the order of the data flow:
TrainState → ``kind.args`` → the cache's fast path (the entry these objects used last, checked
by jax's C++ dispatch) or, on a miss, :func:`luxc.runtime.caching._programs.lookup` and
:func:`luxc.runtime.compiling._executable.build` → outputs → ``kind.results``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from luxc._preferences import preference
from luxc.runtime.caching._executable_cache import CacheEntry, ExecutableCache
from luxc.runtime.caching._programs import lookup, program_key
from luxc.runtime.caching._signature import Signature
from luxc.runtime.compiling._autotune import tune
from luxc.runtime.compiling._executable import Executable, build
from luxc.runtime.compiling._options import CompileOptions, normalise
from luxc.runtime.messages._leaf_names import argument_leaf_name
from luxc.training import _step
from luxc.training._data_check import warn_non_finite
from luxc.training._mixed_precision import initial_loss_scaling
from luxc.training._placement import check_placement
from luxc.training._state import ConsumedStateError, TrainState


class Program(NamedTuple):
    """What a kind's pure step is built from: the user's objects and the normalised options."""

    objective: Any
    model: Any
    optimizer: Any
    return_gradients: bool
    options: CompileOptions


@dataclass(frozen=True)
class StepKind:
    """One kind of compiled call (see the module docstring)."""

    name: str
    arg_names: tuple[str, ...]
    donated: tuple[int, ...]
    args: Callable[[TrainState, Any], tuple]
    build: Callable[[Program], Callable]
    results: Callable[[TrainState, Any, tuple, int], Any]
    returns_gradients: bool = False  # whether ``return_gradients`` applies
    uses_objective: bool = True  # False: objective and model take no part in the program
    committed_outputs: bool = True  # False: outputs uncommitted, as an eager step's
    event: str | None = None  # its jax.profiler trace event, as Lux's Reactant extension names it
    # How one call's outputs become the next call's arguments in a loop of calls (the
    # autotuner times such loops); None: a loop repeats the same arguments.
    chain: Callable[[tuple, tuple], tuple] | None = None


def _training_args(ts: TrainState, data: Any) -> tuple:
    return (ts.parameters, ts.optimizer_state, ts.states, data)


def _evaluation_args(ts: TrainState, data: Any) -> tuple:
    return (ts.parameters, ts.states, data)


def _next_training_args(args: tuple, out: tuple) -> tuple:
    ps, opt_state, st = out[:3]
    return (ps, opt_state, st, args[3])


def _next_update_args(args: tuple, out: tuple) -> tuple:
    ps, opt_state = out
    return (ps, opt_state, args[2])


def _trained(ts: TrainState, obj_fn: Any, out: tuple, steps: int):
    ps, opt_state, st, loss, stats, grads = out
    return grads, loss, stats, ts._advanced(ps, opt_state, st, steps, obj_fn)


def _differentiated(ts: TrainState, obj_fn: Any, out: tuple, steps: int):
    grads, loss, st, stats = out
    return grads, loss, stats, ts._derive({"states": st, "objective_function": obj_fn})


def _updated(ts: TrainState, obj_fn: Any, out: tuple, steps: int) -> TrainState:
    ps, opt_state = out
    return ts._derive({"parameters": ps, "optimizer_state": opt_state, "step": ts.step + steps})


def _as_is(ts: TrainState, obj_fn: Any, out: tuple, steps: int):
    return out


TRAIN = StepKind(
    "train", ("parameters", "optimizer_state", "states", "data"), (0, 1), _training_args,
    lambda p: _step.train(_step.gradient_fn(p.objective, p.model, p.options), p.optimizer,
                          p.return_gradients),
    _trained, returns_gradients=True, event="Train Step", chain=_next_training_args)
TRAIN_STEPS = StepKind(
    "train_steps", ("parameters", "optimizer_state", "states", "batches"), (0, 1), _training_args,
    lambda p: _step.train_scan(_step.gradient_fn(p.objective, p.model, p.options), p.optimizer,
                               p.return_gradients),
    _trained, returns_gradients=True, event="Train Step", chain=_next_training_args)
GRADIENTS = StepKind(
    "gradients", ("parameters", "states", "data"), (), _evaluation_args,
    lambda p: _step.gradient_fn(p.objective, p.model, p.options), _differentiated,
    event="Compute Gradients")
OBJECTIVE = StepKind(
    "objective", ("parameters", "states", "data"), (), _evaluation_args,
    lambda p: _step.evaluate(p.objective, _step.step_model(p.model, p.options)), _as_is)
# Every backend's optimiser update. Its outputs stay uncommitted, as before it was compiled:
# an eager user mixes them with arrays placed elsewhere.
UPDATE = StepKind(
    "update", ("parameters", "optimizer_state", "gradients"), (0, 1),
    lambda ts, grads: (ts.parameters, ts.optimizer_state, grads),
    lambda p: _step.update(p.optimizer), _updated, uses_objective=False,
    committed_outputs=False, event="Apply Gradients", chain=_next_update_args)

KINDS = {k.name: k for k in (TRAIN, TRAIN_STEPS, GRADIENTS, OBJECTIVE, UPDATE)}


def _scaled_args(ts: TrainState, data: Any) -> tuple:
    scaling = ts._loss_scaling if ts._loss_scaling is not None else initial_loss_scaling()
    return (ts.parameters, (ts.optimizer_state, scaling), ts.states, data)


def _scaled_trained(ts: TrainState, obj_fn: Any, out: tuple, steps: int):
    ps, (opt_state, scaling), st, loss, stats, grads = out
    # A skipped update leaves ts.step unchanged: the host reads how many this call skipped
    # (which waits for the step).
    new = ts._advanced(ps, opt_state, st, steps - int(scaling.skipped), obj_fn)
    new._set(_loss_scaling=scaling)
    return grads, loss, stats, new


def _counting_skips(step: Callable) -> Callable:
    """``step`` with the loss scaling's ``skipped`` counter started at 0: after the call it
    holds the updates this call skipped."""
    def call(ps: Any, opt_and_scaling: Any, st: Any, data: Any):
        opt_state, scaling = opt_and_scaling
        return step(ps, (opt_state, scaling._replace(skipped=jnp.zeros_like(scaling.skipped))),
                    st, data)

    return call


# Float16 mixed precision (CompileOptions(mixed_precision="f16")): the training kinds with
# dynamic loss scaling, whose optimiser-state argument is (optimizer_state, LossScaling).
_SCALED_TRAIN = StepKind(
    "train", TRAIN.arg_names, (0, 1), _scaled_args,
    lambda p: _counting_skips(_step.train_step(p.objective, p.model, p.optimizer,
                                               p.return_gradients, p.options)),
    _scaled_trained, returns_gradients=True, event="Train Step", chain=_next_training_args)
_SCALED_TRAIN_STEPS = StepKind(
    "train_steps", TRAIN_STEPS.arg_names, (0, 1), _scaled_args,
    lambda p: _counting_skips(_step.scan(
        _step.train_step(p.objective, p.model, p.optimizer, True, p.options), p.return_gradients)),
    _scaled_trained, returns_gradients=True, event="Train Step", chain=_next_training_args)
_SCALED = {"train": _SCALED_TRAIN, "train_steps": _SCALED_TRAIN_STEPS}


def for_options(kind: StepKind, options: CompileOptions | None) -> StepKind:
    """``kind`` as ``options`` run it: the loss-scaled training kinds under float16."""
    if options is not None and options.scales_loss:
        return _SCALED.get(kind.name, kind)
    return kind


def entry(kind: StepKind, cache: ExecutableCache, program: Program, args: tuple, *,
          donate: bool, caller: str) -> CacheEntry:
    """The cache entry of ``program`` for ``args``' signature; compiles it on a miss."""
    key = program_key(kind.name, program.objective, program.model, program.optimizer,
                      program.return_gradients, donate, program.options)
    signature = Signature.of(args)
    found = lookup(cache, key, signature, kind.arg_names, preference("recompile_check"), caller)
    if found is not None:
        return found
    check_placement(args, kind.arg_names, caller)
    if kind.uses_objective:  # the update's "data" are the backend's own gradients
        warn_non_finite(args[-1], kind.arg_names[-1], caller)
    step = kind.build(program)
    options = program.options

    def compile_with(o: CompileOptions) -> Executable:
        return build(step, args, options=o, donate_argnums=kind.donated if donate else (),
                     arg_names=kind.arg_names, committed_outputs=kind.committed_outputs)

    # Autotuned: the fastest candidate, cached under options that say autotune=True.
    with jax.profiler.TraceAnnotation(f"Compile {kind.event or kind.name}"):
        exe = (tune(compile_with, args, options, jax.default_backend(), chain=kind.chain)
               if options.autotune
               else compile_with(options))
    return cache.add(key, signature, exe)


# Whether a jax.profiler trace is recording (TraceMe::Active: tens of nanoseconds).
_TRACING = jax.profiler.TraceAnnotation.is_enabled


def run(kind: StepKind, obj_fn: Any, data: Any, ts: TrainState, *, donate: bool = False,
        return_gradients: bool = False, sync: bool = False,
        compile_options: CompileOptions | None = None, caller: str, steps: int = 1):
    """One compiled call of the training API; returns what the caller returns. ``donate``:
    the call updates ``ts``'s buffers in place; ``steps``: how many steps it advances
    ``ts.step``; ``caller`` names the API function in errors. This runs on every cache hit:
    keyword arguments straight through, nothing built per call. Under a ``jax.profiler``
    trace the call is one ``kind.event`` step event with the TrainState's ``step_num``;
    without one the check costs a few tens of nanoseconds, the annotation itself
    microseconds."""
    if kind.event is not None and _TRACING():
        with jax.profiler.StepTraceAnnotation(kind.event, step_num=ts.step):
            return _run(kind, obj_fn, data, ts, donate=donate, return_gradients=return_gradients,
                        sync=sync, compile_options=compile_options, caller=caller, steps=steps)
    return _run(kind, obj_fn, data, ts, donate=donate, return_gradients=return_gradients,
                sync=sync, compile_options=compile_options, caller=caller, steps=steps)


def _run(kind: StepKind, obj_fn: Any, data: Any, ts: TrainState, *, donate: bool,
         return_gradients: bool, sync: bool, compile_options: CompileOptions | None, caller: str,
         steps: int):
    if compile_options is not None and compile_options.mixed_precision is not None:
        kind = for_options(kind, compile_options)
    args = kind.args(ts, data)
    return_gradients = return_gradients and kind.returns_gradients
    if not kind.uses_objective:
        obj_fn = model = None
    else:
        model = ts.model
    optimizer, cache = ts.optimizer, ts.cache
    try:
        fast_key = (kind.name, obj_fn, id(model), id(optimizer), return_gradients, donate,
                    compile_options)
        try:
            out = cache.call_fast(fast_key, args)
        except TypeError:  # an unhashable objective: keyed by value or identity on the slow path
            out, fast_key = None, None
        if out is None:
            program = Program(obj_fn, model, optimizer, return_gradients,
                              normalise(compile_options))
            found = entry(kind, cache, program, args, donate=donate, caller=caller)
            if fast_key is not None:
                # The fast key names model and optimizer by id: the entry keeps them alive.
                cache.bind_fast(fast_key, found, pins=(obj_fn, model, optimizer))
            out = found.call(*args)
    except (ValueError, RuntimeError) as e:
        raise_if_consumed(ts, data, caller, e)
        raise
    if donate:
        ts.consume(caller, ts.step)
    if sync:
        jax.block_until_ready(out)
    return kind.results(ts, obj_fn, out, steps)


_PARTS = ("parameters", "optimizer_state", "states", "data")


def consumed_error(ts: TrainState, data: Any, caller: str) -> ConsumedStateError | None:
    """The error for an input an earlier in-place call freed, or ``None`` if none is."""
    parts = (ts.parameters, ts.optimizer_state, ts.states, data)
    dead = [argument_leaf_name(path, _PARTS)
            for path, leaf in jax.tree_util.tree_flatten_with_path(parts)[0]
            if isinstance(leaf, jax.Array) and leaf.is_deleted()]
    if not dead:
        return None
    return ConsumedStateError(
        f"{caller}: {', '.join(dead[:4])} was donated to an earlier in-place call "
        f"(single_train_step_ or apply_gradients_) and freed; use the TrainState that call "
        f"returned")


def raise_if_consumed(ts: TrainState, data: Any, caller: str, error: Exception) -> None:
    consumed = consumed_error(ts, data, caller)
    if consumed is not None:
        raise consumed from error
