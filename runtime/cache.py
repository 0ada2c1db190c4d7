"""ExecutableCache: the compiled programs a TrainState has used, kept in ``TrainState.cache``.

A *program* is what changes the compiled code: the objective, the model, the optimiser, the
kind of step, ``return_gradients``, donation and the compile options. Within a program, one
*entry* per input *signature* (pytree structure, shapes, dtypes, shardings). Entries share no
buffers: every entry reads the same parameters and optimiser state the TrainState holds, so a
train batch size, an eval batch size and a short last batch each compile once.

The cache is bounded (least recently used entries go first) and counts hits, misses and
compile seconds. A miss after the first compile is a *recompile*; ``explain`` says which part
of the key changed, and the ``recompile_check`` preference makes that a warning or an error.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

import jax

RecompileCheck = Literal["none", "warn", "error"]


class RecompileError(RuntimeError):
    """A recompile happened while the ``recompile_check`` preference is ``"error"``."""


class RecompileWarning(UserWarning):
    """A recompile happened while the ``recompile_check`` preference is ``"warn"``."""


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    entries: int
    compile_seconds: float

    def __str__(self) -> str:
        return (f"{self.hits} hits, {self.misses} misses, {self.entries} entries, "
                f"{self.compile_seconds:.2f}s compiling")


class Identity:
    """Wraps an object so that it keys a dict by identity (and stays alive while cached)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        return getattr(self.obj, "__name__", None) or type(self.obj).__name__


@dataclass(frozen=True)
class ProgramKey:
    """Everything but the input signature that changes the compiled program."""

    kind: str
    objective: Identity
    model: Identity
    optimizer: Identity
    return_gradients: bool
    donate: bool
    compile_options: Hashable


@dataclass(frozen=True)
class Signature:
    """The input signature: what jax's own dispatch checks."""

    structure: Any
    shapes: tuple
    dtypes: tuple
    shardings: tuple

    @classmethod
    def of(cls, args: Any) -> Signature:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        return cls(
            treedef,
            tuple(getattr(x, "shape", ()) for x in leaves),
            tuple(str(getattr(x, "dtype", type(x).__name__)) for x in leaves),
            tuple(_sharding(x) for x in leaves),
        )


def _sharding(x: Any) -> Hashable:
    s = getattr(x, "sharding", None)
    if s is None or len(getattr(s, "device_set", ())) <= 1:
        return None
    return str(s)


_PROGRAM_PARTS = {
    "objective": "the objective function",
    "model": "the model",
    "optimizer": "the optimizer",
    "return_gradients": "return_gradients",
    "donate": "donation (in-place variant or not)",
    "compile_options": "the compile options",
}
_SIGNATURE_PARTS = {
    "structure": "the pytree structure of the inputs",
    "shapes": "input shapes",
    "dtypes": "input dtypes",
    "shardings": "input shardings",
}


def explain(old: tuple[ProgramKey, Signature], new: tuple[ProgramKey, Signature]) -> str:
    """One sentence naming what differs between two cache keys, with the values for shapes and
    dtypes."""
    changed = []
    for part, words in _PROGRAM_PARTS.items():
        if getattr(old[0], part) != getattr(new[0], part):
            changed.append(words)
    for part, words in _SIGNATURE_PARTS.items():
        if part != "structure" and old[1].structure != new[1].structure:
            continue  # leaf-by-leaf comparisons mean nothing across different structures
        a, b = getattr(old[1], part), getattr(new[1], part)
        if a != b:
            if part in ("shapes", "dtypes") and len(a) == len(b):
                diffs = [f"input {i}: {x} -> {y}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
                words += " (" + "; ".join(diffs[:3]) + ("; …" if len(diffs) > 3 else "") + ")"
            changed.append(words)
    return "recompiling because " + (", ".join(changed) or "the cache entry was evicted") + " changed"


@dataclass
class _Program:
    entries: OrderedDict = field(default_factory=OrderedDict)
    last: Any = None


class ExecutableCache:
    """Compiled entries by ``(ProgramKey, Signature)``, least recently used evicted first."""

    def __init__(self, max_entries: int = 32):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1; received {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.compile_seconds = 0.0
        self._programs: dict[ProgramKey, _Program] = {}
        self._keys: OrderedDict = OrderedDict()
        self._last_by_kind: dict[str, tuple[ProgramKey, Signature]] = {}
        self.recompiles: deque[str] = deque(maxlen=100)
        self.aux: dict[Hashable, Any] = {}

    def program(self, key: ProgramKey) -> _Program:
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = _Program()
        return prog

    def lookup(self, key: ProgramKey, sig: Signature) -> Any:
        prog = self.program(key)
        entry = prog.entries.get(sig)
        if entry is not None:
            prog.entries.move_to_end(sig)
            self._keys.move_to_end((key, sig))
            prog.last = entry
        return entry

    def check_recompile(self, key: ProgramKey, sig: Signature, policy: RecompileCheck) -> None:
        """Called on a miss, before compiling: warns or raises when this is a recompile, i.e.
        a call of a kind (train step, gradients, objective) that already compiled once."""
        last = self._last_by_kind.get(key.kind)
        if last is None:
            return
        message = explain(last, (key, sig))
        self.recompiles.append(message)
        if policy == "none":
            return
        if policy == "error":
            raise RecompileError(message + " (recompile_check='error')")
        warnings.warn(message, RecompileWarning, stacklevel=4)

    def insert(self, key: ProgramKey, sig: Signature, entry: Any, seconds: float) -> None:
        prog = self.program(key)
        prog.entries[sig] = entry
        prog.last = entry
        self._keys[(key, sig)] = None
        self._last_by_kind[key.kind] = (key, sig)
        self.misses += 1
        self.compile_seconds += seconds
        while len(self._keys) > self.max_entries:
            (k, s), _ = self._keys.popitem(last=False)
            p = self._programs[k]
            evicted = p.entries.pop(s)
            if p.last is evicted:
                p.last = next(reversed(p.entries.values()), None)
            for fast_key in [k for k, v in self.aux.items() if v is evicted]:
                del self.aux[fast_key]

    def entries(self) -> list[Any]:
        return [e for p in self._programs.values() for e in p.entries.values()]

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, len(self._keys), self.compile_seconds)

    def clear(self) -> None:
        self._programs.clear()
        self._keys.clear()
        self.aux.clear()
        self._last_by_kind.clear()


def cache_info(ts_or_cache: Any) -> CacheInfo:
    """Hits, misses, entries and compile seconds of a TrainState's cache (or of a cache)."""
    cache = getattr(ts_or_cache, "cache", ts_or_cache)
    if not isinstance(cache, ExecutableCache):
        raise TypeError(f"cache_info expects a TrainState or an ExecutableCache; "
                        f"received {type(ts_or_cache).__name__}")
    return cache.info()


def explain_recompiles(ts_or_cache: Any) -> list[str]:
    """Why each recompile of a TrainState's cache happened (the last 100), oldest first, e.g.
    ``"recompiling because input shapes (input 7: (64, 1) -> (17, 1)) changed"``."""
    cache = getattr(ts_or_cache, "cache", ts_or_cache)
    if not isinstance(cache, ExecutableCache):
        raise TypeError(f"explain_recompiles expects a TrainState or an ExecutableCache; "
                        f"received {type(ts_or_cache).__name__}")
    return list(cache.recompiles)
