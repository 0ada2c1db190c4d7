"""The persistent compilation cache: a second process compiling the same step loads the XLA
executable from disk instead of compiling it again.

An entry is a serialized executable, i.e. native code, so luxc's cache is not jax's plain file
cache:

* every entry carries an HMAC of (its key, its bytes) made with this user's key
  (:mod:`luxc.runtime.trust._user_key`): an entry written by someone else, or copied under another key
  (another program's executable), does not verify and is compiled afresh instead;
* a directory that another user owns or can write is refused for loading (a warning, once; luxc
  compiles instead);
* the directory is created 0700, entries 0600; luxc only ever deletes its own entries
  (``*.luxc-xla``) when the size bound is exceeded;
* it is used only by luxc's own compiles, for their duration: nothing changes at
  ``import luxc``, and the host program's own ``jax.jit`` calls never see it.

It is off until :func:`enable` is called or ``$LUXC_CACHE_DIR`` is set (read at the first
compile). ``disable()`` turns it off again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

from luxc.runtime._jax_internal import cache_interface, compilation_cache_scope
from luxc.runtime.files._atomic_write import write_atomic
from luxc.runtime.files._bounded_read import read_regular
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.trust._user_key import (
    KeyUnavailable,
    key_problem,
    shared_directory_problem,
    sign,
    verify,
)

# The public surface; AuthenticatedFileCache, MemoryCache, compiling and using serve luxc's own
# compiles.
__all__ = ["DEFAULT_MAX_BYTES", "CacheDirectoryError", "PersistentCacheWarning", "active",
           "default_directory", "disable", "enable", "entries"]

DEFAULT_MAX_BYTES = 4 << 30
_SUFFIX = ".luxc-xla"
_DOMAIN = "luxc-compilation-cache-entry-v1"
_TAG_BYTES = 64  # hex HMAC-SHA256


class CacheDirectoryError(ValueError):
    """The persistent cache directory cannot be used."""


class PersistentCacheWarning(UserWarning):
    """The persistent cache was not used for loading (the step was compiled instead)."""


class AuthenticatedFileCache(cache_interface()):
    """jax's cache interface over a directory of luxc-authenticated entries."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self._path, self.max_bytes = path, max_bytes
        self.hits = self.rejected = 0

    @property
    def loads_refused(self) -> str | None:
        """Why nothing is loaded from (or stored in) the directory now, or ``None``; asked at
        every use, since the directory's permissions can change while luxc runs."""
        return shared_directory_problem(self._path) or key_problem()

    def _file(self, key: str) -> Path:
        return self._path / (hashlib.sha256(key.encode()).hexdigest() + _SUFFIX)

    def get(self, key: str) -> bytes | None:
        if self.loads_refused is not None:
            return None
        try:
            data = read_regular(self._file(key), "cache entry", self.max_bytes)
        except ArtifactError:
            return None
        tag, value = data[:_TAG_BYTES], data[_TAG_BYTES:]
        if not verify(tag, _DOMAIN, key.encode(), value):
            self.rejected += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: bytes) -> None:
        self._path.mkdir(mode=0o700, parents=True, exist_ok=True)  # deleted while luxc ran
        if shared_directory_problem(self._path) is not None:
            return  # a directory others can write is not one to leave executables in either
        try:
            tag = sign(_DOMAIN, key.encode(), value)  # creates the key on first use
        except KeyUnavailable:
            return
        write_atomic(self._file(key), tag.encode() + value, mode=0o600)
        self._evict()

    def _own_entries(self) -> list[tuple[os.stat_result, Path]]:
        entries = []
        for p in self._path.glob("*" + _SUFFIX):
            with contextlib.suppress(OSError):
                info = os.lstat(p)
                if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                    entries.append((info, p))
        return entries

    def _evict(self) -> None:
        entries = [(info.st_atime, info.st_size, p) for info, p in self._own_entries()]
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size

    def clear(self) -> None:
        for _, p in self._own_entries():
            with contextlib.suppress(OSError):
                p.unlink()


class MemoryCache(cache_interface()):
    """A cache in memory: what one compile wrote (``put``), or one given entry to load."""

    def __init__(self, entries: dict[str, bytes] | None = None):
        self.entries = dict(entries or {})
        self.hits = self.puts = 0

    def get(self, key: str) -> bytes | None:
        value = self.entries.get(key)
        self.hits += value is not None
        return value

    def put(self, key: str, value: bytes) -> None:
        self.puts += 1
        self.entries[key] = value

    @property
    def loaded(self) -> bool:
        """Whether a compile in its scope loaded an entry: jax found one and, unlike after a
        miss or an entry it could not deserialize, did not compile and store a new one."""
        return self.hits > 0 and self.puts == 0

    def clear(self) -> None:
        self.entries.clear()


_state: dict[str, object] = {"configured": False, "cache": None, "warned": False}


def default_directory() -> Path:
    return Path(os.environ.get("LUXC_CACHE_DIR") or Path.home() / ".cache" / "luxc" / "xla")


def _open(directory: Path, max_bytes: int, what: str) -> AuthenticatedFileCache:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise CacheDirectoryError(f"{what} {directory} cannot be used as the compilation cache: "
                                  f"{e.strerror}") from None
    if not directory.is_dir():
        raise CacheDirectoryError(f"{what} {directory} is not a directory")
    return AuthenticatedFileCache(directory, max_bytes)


def enable(directory: str | Path | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Use the persistent cache in ``directory`` (default ``$LUXC_CACHE_DIR`` or
    ``~/.cache/luxc/xla``) for luxc's compiles in this process; returns the directory."""
    path = Path(directory) if directory is not None else default_directory()
    what = "LUXC_CACHE_DIR" if directory is None and os.environ.get("LUXC_CACHE_DIR") else \
        "directory"
    _state.update(configured=True, cache=_open(path, int(max_bytes), what), warned=False)
    return path


def disable() -> None:
    """Stop using the persistent cache (also ignores ``$LUXC_CACHE_DIR`` from now on)."""
    _state.update(configured=True, cache=None)


def active() -> AuthenticatedFileCache | None:
    """The cache luxc's compiles use now, reading ``$LUXC_CACHE_DIR`` the first time."""
    if not _state["configured"]:
        _state["configured"] = True
        if os.environ.get("LUXC_CACHE_DIR"):
            try:
                _state["cache"] = _open(default_directory(), DEFAULT_MAX_BYTES, "LUXC_CACHE_DIR")
            except CacheDirectoryError as e:
                warnings.warn(f"{e}; compiling without a persistent cache", PersistentCacheWarning,
                              stacklevel=3)
    cache = _state["cache"]
    refused = (cache is not None and not _state["warned"] and cache._path.exists()
               and shared_directory_problem(cache._path))
    if refused:
        _state["warned"] = True
        warnings.warn(f"not loading executables from the persistent cache: {refused}; compiling "
                      "instead", PersistentCacheWarning, stacklevel=3)
    return cache


@contextlib.contextmanager
def compiling(cache: object | None = None) -> Iterator[None]:
    """The scope of one luxc compile: jax reads and writes ``cache`` (default: the active
    persistent cache; with none, jax's own configuration applies unchanged)."""
    cache = cache if cache is not None else active()
    if cache is None:
        yield
        return
    with compilation_cache_scope(cache):
        yield


@contextlib.contextmanager
def using(directory: str | Path) -> Iterator[Path]:
    """Use the cache in ``directory`` within the block, then the previous setting again."""
    saved = dict(_state)
    try:
        yield enable(directory)
    finally:
        _state.clear()
        _state.update(saved)


def entries(directory: str | Path | None = None) -> int:
    """Number of executables stored in the cache directory."""
    path = Path(directory) if directory is not None else default_directory()
    return sum(1 for _ in path.glob("*" + _SUFFIX)) if path.is_dir() else 0
