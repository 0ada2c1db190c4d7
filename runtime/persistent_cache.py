"""The persistent compilation cache: a second process compiling the same step loads the XLA
executable from disk instead of compiling it again.

It is jax's own cache, configured for luxc: every executable is cached (no minimum compile
time or size) and a size bound is set, which makes jax guard reads and writes with a file
lock, so several processes can share one directory safely.

The directory is ``$LUXC_CACHE_DIR`` if set, else ``~/.cache/luxc/xla``. Setting
``LUXC_CACHE_DIR`` also turns the cache on when luxc is imported; otherwise call :func:`enable`.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

DEFAULT_MAX_BYTES = 4 << 30


def default_directory() -> Path:
    return Path(os.environ.get("LUXC_CACHE_DIR", Path.home() / ".cache" / "luxc" / "xla"))


def enable(directory: str | Path | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Turn the persistent cache on for this process; returns the directory used."""
    path = Path(directory) if directory is not None else default_directory()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    _reset_jax_cache_handle()
    return path


def disable() -> None:
    """Turn the persistent cache off for this process."""
    jax.config.update("jax_compilation_cache_dir", None)
    _reset_jax_cache_handle()


def _reset_jax_cache_handle() -> None:
    # jax opens its cache lazily once per process; make it pick up the new directory.
    from luxc.runtime._jax_internal import reset_compilation_cache

    reset_compilation_cache()


def entries(directory: str | Path | None = None) -> int:
    """Number of executables stored in the cache directory."""
    path = Path(directory) if directory is not None else default_directory()
    return sum(1 for p in path.glob("*-cache")) if path.is_dir() else 0


def enable_from_environment() -> Path | None:
    """Turn the cache on if ``LUXC_CACHE_DIR`` is set (called when luxc is imported)."""
    return enable() if os.environ.get("LUXC_CACHE_DIR") else None
