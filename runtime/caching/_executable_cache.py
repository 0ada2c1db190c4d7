"""ExecutableCache: the compiled programs a TrainState has used, kept in ``TrainState.cache``.

A *program* is what changes the compiled code: the kind of call, the objective, the model, the
optimiser, ``return_gradients``, donation and the compile options (a :class:`ProgramKey`).
Within a program there is one *entry* per input :class:`~luxc.runtime.caching._signature.Signature`.
Entries share no buffers: every entry reads the parameters and optimiser state the TrainState
holds, so a train batch size, an eval batch size and a short last batch each compile once.

The cache owns the whole lookup:

* the fast path: a call's program, as the objects the caller passed, maps to the entry it used
  last; that executable is called directly and jax's C++ dispatch checks the arguments. If jax
  refuses them (another shape, dtype, sharding, layout or device), the slow path runs.
* the slow path: the arguments' signature is computed and looked up; a miss compiles.
* counting (hits, misses, compile seconds) and eviction: at most ``max_entries`` entries, least
  recently used first. An evicted entry is released, with what jax's caches hold for it, and
  a program without entries is dropped with its objective.

A miss after the first compile of a kind of call is a *recompile*; its reason names what
changed in the user's words (``data[0]: shape (32, 4) -> (17, 4)``).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from luxc.runtime._jax_internal import release_staging_caches
from luxc.runtime.caching._signature import Signature, differences
from luxc.runtime.compiling._executable import Executable

DEFAULT_MAX_ENTRIES = 32


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
        def count(n: int, word: str, plural: str) -> str:
            return f"{n} {word if n == 1 else plural}"

        return (f"{count(self.hits, 'hit', 'hits')}, {count(self.misses, 'miss', 'misses')}, "
                f"{count(self.entries, 'entry', 'entries')}, {self.compile_seconds:.2f}s compiling")


@dataclass(frozen=True)
class ProgramKey:
    """Everything but the input signature that changes the compiled program.

    ``objective``, ``model`` and ``optimizer`` are the keys the compiler derived from the user's
    objects (by value where they can be compared, else by identity); ``described`` holds the
    user's objects themselves, for explanations and results, and takes no part in equality.
    """

    kind: str
    objective: Hashable
    model: Hashable
    optimizer: Hashable
    return_gradients: bool
    donate: bool
    compile_options: Hashable
    described: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class CacheEntry:
    """One compiled executable, its key and signature, and the fast-path key that reaches it."""

    __slots__ = ("key", "signature", "executable", "call", "fast_key", "pins")

    def __init__(self, key: ProgramKey, signature: Signature, executable: Executable):
        self.key, self.signature, self.executable = key, signature, executable
        self.call = executable.call
        self.fast_key: Hashable | None = None
        self.pins: tuple = ()


_PROGRAM_PARTS = {"objective": "objective function", "model": "model", "optimizer": "optimizer",
                  "return_gradients": "return_gradients", "donate": "donation (in-place variant)",
                  "compile_options": "compile options"}


def explain(old: tuple[ProgramKey, Signature], new: tuple[ProgramKey, Signature],
            arg_names: Sequence[str]) -> str:
    """One sentence naming what differs between two cache keys, with old -> new values; parts
    that did not change are not mentioned."""
    changed = []
    for part in _PROGRAM_PARTS:
        if getattr(old[0], part) != getattr(new[0], part):
            a = old[0].described.get(part, getattr(old[0], part))
            b = new[0].described.get(part, getattr(new[0], part))
            changed.append(_change(part, a, b))
    if old[0].kind == new[0].kind:
        changed += differences(old[1], new[1], arg_names)
    return "recompiling: " + ("; ".join(changed[:6]) + ("; …" if len(changed) > 6 else "")
                              if changed else "the entry was evicted from the cache")


def _distance(a: tuple[ProgramKey, Signature], b: tuple[ProgramKey, Signature]) -> int:
    parts = sum(getattr(a[0], p) != getattr(b[0], p) for p in _PROGRAM_PARTS)
    if a[1].structure != b[1].structure:
        return parts + len(b[1].leaves) + 1
    return parts + sum(x != y for x, y in zip(a[1].leaves, b[1].leaves))


def _change(part: str, a: Any, b: Any) -> str:
    if dataclasses.is_dataclass(a) and type(a) is type(b) and part == "compile_options":
        fields = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        return "; ".join(f"compile options: {_FIELD_WORDS.get(f, f)} {getattr(a, f)!r} -> "
                         f"{getattr(b, f)!r}" for f in fields)
    return f"{_PROGRAM_PARTS[part]}: {_short(a)} -> {_short(b)}"


# Compile-option fields named in words in a recompile reason.
_FIELD_WORDS = {"mixed_precision": "mixed precision"}


def _short(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    text = name if name is not None else repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


class ExecutableCache:
    """Compiled entries by ``(ProgramKey, Signature)``, least recently used evicted first.

    Args:
        max_entries: how many executables to keep (each holds its compiled code, typically
            a few MiB); the least recently used one is released when a new one is added.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES):
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer of at least 1; received {max_entries!r}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.compile_seconds = 0.0
        self.recompiles: deque[str] = deque(maxlen=100)
        self._warned: set[str] = set()
        self._entries: OrderedDict[tuple[ProgramKey, Signature], CacheEntry] = OrderedDict()
        self._fast: dict[Hashable, CacheEntry] = {}
        self._last_by_kind: dict[str, tuple[ProgramKey, Signature]] = {}

    def call_fast(self, fast_key: Hashable, args: tuple) -> Any:
        """The outputs of the entry ``fast_key`` used last, run on ``args``; ``None`` if there is
        none or jax refuses the arguments' signature (it checks them before running anything)."""
        entry = self._fast.get(fast_key)
        if entry is None:
            return None
        try:
            out = entry.call(*args)
        except (TypeError, ValueError):
            # jax's refusals: TypeError for structure/shape/dtype, ValueError for sharding,
            # layout and device; a deleted input is also a ValueError, which the slow path
            # raises again for the caller to explain.
            return None
        self.hits += 1
        return out

    def first_warning(self, topic: str) -> bool:
        """``True`` the first time ``topic`` is asked about: a warning this cache gives once."""
        if topic in self._warned:
            return False
        self._warned.add(topic)
        return True

    def get(self, key: ProgramKey, signature: Signature) -> CacheEntry | None:
        """The entry for ``(key, signature)`` (a hit), or ``None``."""
        entry = self._entries.get((key, signature))
        if entry is not None:
            self._entries.move_to_end((key, signature))
            self.hits += 1
        return entry

    def last(self, kind: str) -> tuple[ProgramKey, Signature] | None:
        """The key and signature of the last compile of ``kind``."""
        return self._last_by_kind.get(kind)

    def recompile_reason(self, key: ProgramKey, signature: Signature,
                         arg_names: Sequence[str]) -> str | None:
        """On a miss, before compiling: why this kind of call compiles again (recorded), or
        ``None`` for the first compile of its kind."""
        last = self._last_by_kind.get(key.kind)
        if last is None:
            return None
        # Explain against the closest program still cached (else the last compiled one): what
        # the user changed relative to what they already have.
        same_kind = [k for k in self._entries if k[0].kind == key.kind] or [last]
        closest = min(reversed(same_kind), key=lambda k: _distance(k, (key, signature)))
        reason = explain(closest, (key, signature), arg_names)
        self.recompiles.append(reason)
        return reason

    def add(self, key: ProgramKey, signature: Signature, executable: Executable) -> CacheEntry:
        """Insert a freshly compiled executable (a miss); evicts beyond ``max_entries``."""
        entry = CacheEntry(key, signature, executable)
        self._entries[(key, signature)] = entry
        self._last_by_kind[key.kind] = (key, signature)
        self.misses += 1
        self.compile_seconds += executable.compile_seconds + executable.trace_seconds
        evicted = False
        while len(self._entries) > self.max_entries:
            _, old = self._entries.popitem(last=False)
            self._unbind(old)
            evicted = True
        if evicted:
            release_staging_caches()
        return entry

    def bind_fast(self, fast_key: Hashable, entry: CacheEntry, pins: tuple = ()) -> None:
        """Make ``fast_key`` reach ``entry``; ``pins`` (objects the key names by id) live as
        long as the binding. An entry keeps one fast key (the last caller's objects), so the
        fast map never holds more objects alive than the entries do."""
        self._unbind(entry)
        previous = self._fast.get(fast_key)
        if previous is not None:
            previous.fast_key, previous.pins = None, ()
        self._fast[fast_key] = entry
        entry.fast_key, entry.pins = fast_key, pins

    def _unbind(self, entry: CacheEntry) -> None:
        if entry.fast_key is not None and self._fast.get(entry.fast_key) is entry:
            del self._fast[entry.fast_key]
        entry.fast_key, entry.pins = None, ()

    def entries(self) -> list[CacheEntry]:
        return list(self._entries.values())

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, len(self._entries), self.compile_seconds)

    def clear(self) -> None:
        """Drop every entry (and what jax's caches hold for them)."""
        self._entries.clear()
        self._fast.clear()
        self._last_by_kind.clear()
        release_staging_caches()


def _cache_of(ts_or_cache: Any, fn: str) -> ExecutableCache:
    cache = getattr(ts_or_cache, "cache", ts_or_cache)
    if not isinstance(cache, ExecutableCache):
        raise TypeError(f"{fn} expects a TrainState or an ExecutableCache; "
                        f"received {type(ts_or_cache).__name__}")
    return cache


def cache_info(ts_or_cache: Any) -> CacheInfo:
    """Hits, misses, entries and compile seconds of a TrainState's cache (or of a cache)."""
    return _cache_of(ts_or_cache, "cache_info").info()


def explain_recompiles(ts_or_cache: Any) -> list[str]:
    """Why each recompile of a TrainState's cache happened (the last 100), oldest first, e.g.
    ``"recompiling: data[0]: shape (64, 1) -> (17, 1); data[1]: shape (64, 1) -> (17, 1)"``."""
    return list(_cache_of(ts_or_cache, "explain_recompiles").recompiles)
