"""AutoXLA's compiler: from a kind of call and its arrays to a cached executable's outputs.

The training API hands over *what* to run — the kind of call (``"train"``, ``"train_steps"``,
``"gradients"``, ``"objective"``, ``"update"``), the user's objective, model and optimiser, and
the argument arrays — plus a function that builds the pure step when a compile is needed. This
module turns the user's objects into a :class:`~luxc.runtime.cache.ProgramKey` (comparing
objectives by value where Python allows it), asks the TrainState's
:class:`~luxc.runtime.ExecutableCache` for an entry, and on a miss traces, rewrites and compiles
the step (``luxc.runtime.executable.build``), warning or raising as the ``recompile_check``
preference says.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Hashable
from typing import Any, Literal

import jax

from luxc._data_check import warn_non_finite
from luxc._placement import check_placement
from luxc._preferences import preference
from luxc.runtime.cache import (
    CacheEntry,
    ExecutableCache,
    ProgramKey,
    RecompileError,
    RecompileWarning,
)
from luxc.runtime.executable import build
from luxc.runtime.options import CompileOptions, normalise
from luxc.runtime.signature import Signature
from luxc.runtime.warn import warn_user

Kind = Literal["train", "train_steps", "gradients", "objective", "update"]
ARG_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("parameters", "optimizer_state", "states", "data"),
    "train_steps": ("parameters", "optimizer_state", "states", "batches"),
    "gradients": ("parameters", "states", "data"),
    "objective": ("parameters", "states", "data"),
    "update": ("parameters", "optimizer_state", "gradients"),
}
# (kind, objective, model, optimizer, return_gradients) -> the pure step function to compile.
MakeStep = Callable[[str, Any, Any, Any, bool], Callable]
# What a donating call of each kind gives up: the parameters and the optimiser state it replaces.
DONATED = (0, 1)


class NewObjectiveWarning(RecompileWarning):
    """The objective changes at every call (a fresh lambda or closure), so each call compiles."""


class Identity:
    """Keys by identity an object that cannot be compared by value (and keeps it alive while
    its program is cached)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _value(obj: Any) -> Hashable:
    try:
        hash(obj)
    except TypeError:
        return Identity(obj)
    return obj


def objective_key(obj: Any) -> Hashable:
    """A key under which equal objectives are equal.

    ``functools.partial`` of one function with equal arguments, bound methods of one object,
    closures of one ``def``/``lambda`` over the same captured objects, and hashable callables
    (luxc's losses are frozen dataclasses) compare by value; anything else by identity.
    """
    if isinstance(obj, functools.partial):
        kwargs = tuple(sorted((k, _value(v)) for k, v in obj.keywords.items()))
        return ("partial", objective_key(obj.func), tuple(_value(a) for a in obj.args), kwargs)
    if isinstance(obj, types.MethodType):
        return ("method", objective_key(obj.__func__), _value(obj.__self__))
    if isinstance(obj, types.FunctionType):
        cells = tuple(_cell(c) for c in obj.__closure__ or ())
        return ("function", obj.__code__, Identity(obj.__globals__), _value(obj.__defaults__),
                _value(obj.__kwdefaults__ and tuple(sorted(obj.__kwdefaults__.items()))), cells)
    return _value(obj)


def _cell(cell: types.CellType) -> Hashable:
    try:
        return _value(cell.cell_contents)
    except ValueError:  # an empty cell (a name assigned after the closure was made)
        return Identity(cell)


def _code(obj: Any) -> Any:
    while isinstance(obj, functools.partial | types.MethodType):
        obj = obj.func if isinstance(obj, functools.partial) else obj.__func__
    return getattr(obj, "__code__", type(obj))


def program_key(kind: Kind, obj_fn: Any, model: Any, optimizer: Any, return_gradients: bool,
                donate: bool, options: CompileOptions) -> ProgramKey:
    described = {"objective": obj_fn, "model": model, "optimizer": optimizer}
    return ProgramKey(kind, objective_key(obj_fn), Identity(model), _value(optimizer),
                      return_gradients, donate, options, described)


def compile_entry(cache: ExecutableCache, key: ProgramKey, args: tuple, make_step: MakeStep,
                  caller: str) -> CacheEntry:
    """The entry for ``key`` and ``args``' signature; compiles it on a miss."""
    signature = Signature.of(args)
    entry = cache.get(key, signature)
    if entry is not None:
        return entry
    check_placement(args, ARG_NAMES[key.kind], caller)
    if key.kind != "update":  # the eager backends' update: its data are their own gradients
        warn_non_finite(args[-1], ARG_NAMES[key.kind][-1], caller)
    last = cache.last(key.kind)
    reason = cache.recompile_reason(key, signature, ARG_NAMES[key.kind])
    if reason is not None:
        _report(reason, caller)
        if _fresh_objective(last[0], key) and "objective" not in cache.warned:
            cache.warned.add("objective")
            warn_user(
                f"{caller}: the objective function is a new object that does not compare equal "
                f"to the previous one (a lambda or closure capturing new values?), so each one "
                f"compiles a new program. Define it once outside the loop, or pass what changes "
                f"through the data", NewObjectiveWarning)
    d = key.described
    step = make_step(key.kind, d["objective"], d["model"], d["optimizer"], key.return_gradients)
    exe = build(step, args, options=key.compile_options,
                donate_argnums=DONATED if key.donate else (), arg_names=ARG_NAMES[key.kind][:2])
    if key.kind == "update":
        # The eager backends' update: called through jax.jit so that, as before, its outputs
        # stay uncommitted (an ahead-of-time executable commits them to its device, and an
        # eager user mixes them with arrays placed elsewhere).
        exe.call = jax.jit(step, donate_argnums=DONATED if key.donate else ())
    return cache.add(key, signature, exe)


def _report(reason: str, caller: str) -> None:
    policy = preference("recompile_check")
    if policy == "error":
        raise RecompileError(f"{caller}: {reason} (recompile_check='error')")
    if policy == "warn":
        warn_user(f"{caller}: {reason}", RecompileWarning)


def _fresh_objective(old: ProgramKey, new: ProgramKey) -> bool:
    # Lux warns when the objective changes between calls; a new program whose only difference
    # is an objective made from the same code is the per-call lambda this catches.
    same_rest = all(getattr(old, f) == getattr(new, f) for f in
                    ("kind", "model", "optimizer", "return_gradients", "donate", "compile_options"))
    a, b = old.described["objective"], new.described["objective"]
    return same_rest and old.objective != new.objective and _code(a) == _code(b)


def run(cache: ExecutableCache, kind: Kind, obj_fn: Any, model: Any, optimizer: Any, args: tuple,
        make_step: MakeStep, return_gradients: bool, donate: bool,
        options: CompileOptions | None, caller: str) -> Any:
    """Run a kind of call on ``args`` and return its outputs: the fast path if the entry these
    objects used last accepts them, else lookup or compile (positional arguments: this is the
    hot path of every compiled call)."""
    fast_key = (kind, obj_fn, id(model), id(optimizer), return_gradients, donate, options)
    try:
        hit = cache.call_fast(fast_key, args)
    except TypeError:  # an unhashable objective: keyed by value or identity on the slow path
        hit, fast_key = None, None
    if hit is not None:
        return hit
    key = program_key(kind, obj_fn, model, optimizer, return_gradients, donate, normalise(options))
    entry = compile_entry(cache, key, args, make_step, caller)
    if fast_key is not None:
        # The fast key names model and optimizer by id: the entry keeps them alive with it.
        cache.bind_fast(fast_key, entry, pins=(obj_fn, model, optimizer))
    return entry.call(*args)
