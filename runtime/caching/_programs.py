"""Program keys: which cached executable a call of the training API may reuse, and the
recompile policy when none fits.

A :class:`~luxc.runtime.caching._executable_cache.ProgramKey` names everything but the input
signature that changes the compiled program: the kind of call, the objective (compared by value
where Python allows it, :func:`objective_key`), the model and optimiser (by identity),
``return_gradients``, donation and the compile options. :func:`lookup` asks the cache for
``(key, signature)``; on a miss it says why this kind of call compiles again, as the
``recompile_check`` policy asks (``"error"`` raises
:class:`~luxc.runtime.caching._executable_cache.RecompileError`, ``"warn"`` warns), and warns
once per cache about an objective remade at every call. Compiling is
:func:`luxc.runtime.compiling._executable.build`'s; which step to compile, the caller's.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Hashable, Sequence
from typing import Any, Literal

from luxc.runtime.caching._executable_cache import (
    CacheEntry,
    ExecutableCache,
    ProgramKey,
    RecompileError,
    RecompileWarning,
)
from luxc.runtime.caching._signature import Signature
from luxc.runtime.compiling._options import CompileOptions
from luxc.runtime.messages._warn import warn_user

RecompilePolicy = Literal["none", "warn", "error"]


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


def program_key(kind: str, obj_fn: Any, model: Any, optimizer: Any, return_gradients: bool,
                donate: bool, options: CompileOptions) -> ProgramKey:
    described = {"objective": obj_fn, "model": model, "optimizer": optimizer}
    return ProgramKey(kind, objective_key(obj_fn), Identity(model), _value(optimizer),
                      return_gradients, donate, options, described)


def lookup(cache: ExecutableCache, key: ProgramKey, signature: Signature,
           arg_names: Sequence[str], policy: RecompilePolicy, caller: str) -> CacheEntry | None:
    """The entry for ``(key, signature)``, or ``None`` after applying the recompile policy to
    the miss (the caller then compiles and adds the entry)."""
    entry = cache.get(key, signature)
    if entry is not None:
        return entry
    last = cache.last(key.kind)
    reason = cache.recompile_reason(key, signature, arg_names)
    if reason is not None:
        if policy == "error":
            raise RecompileError(f"{caller}: {reason} (recompile_check='error')")
        if policy == "warn":
            warn_user(f"{caller}: {reason}", RecompileWarning)
        if _fresh_objective(last[0], key) and cache.first_warning("objective"):
            warn_user(
                f"{caller}: the objective function is a new object that does not compare equal "
                f"to the previous one (a lambda or closure capturing new values?), so each one "
                f"compiles a new program. Define it once outside the loop, or pass what changes "
                f"through the data", NewObjectiveWarning)
    return None


def _fresh_objective(old: ProgramKey, new: ProgramKey) -> bool:
    # Lux warns when the objective changes between calls; a new program whose only difference
    # is an objective made from the same code is the per-call lambda this catches.
    same_rest = all(getattr(old, f) == getattr(new, f) for f in
                    ("kind", "model", "optimizer", "return_gradients", "donate", "compile_options"))
    a, b = old.described["objective"], new.described["objective"]
    return same_rest and old.objective != new.objective and _code(a) == _code(b)
