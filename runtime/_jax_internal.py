"""Every use of jax-internal API in luxc, so a jax upgrade touches one file.

* ``ir_context()`` — an MLIR context with every dialect jax emits (func, stablehlo, chlo, sdy…);
  a bare ``ir.Context()`` cannot parse jax's modules.
* ``deserialize_module`` / ``serialize_module`` — the portable-artifact (VHLO) round trip jax's
  own ``jax.export`` uses. Unlike the public ``stablehlo.serialize_portable_artifact`` binding,
  it handles the Shardy (``sdy``) sharding attributes of multi-device modules.
* ``compilation_cache_scope(cache)`` — jax's compiles use luxc's (authenticated) cache object
  for the duration of one luxc compile; jax's own cache state is restored after.
* ``stable_custom_call_targets()`` — the custom-call targets jax.export accepts, to check an
  artifact's module against.
* ``refine_shapes(module)`` — jax's own shape refinement of a shape-polymorphic module (what
  ``Lowered.compile()`` runs before XLA sees it), to check the module XLA will compile.
* ``lapack_initialization(needed)`` — lowering an ``Exported`` for CPU loads LAPACK (an import
  of scipy, ~0.2 s of a first step) unless the module calls no LAPACK kernel.
* ``staged(x)`` — whether ``x`` is being traced into a program (``jax.jit``, ``jax.export``),
  not computed now (op by op, ``jax.grad`` without ``jit`` included).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import jax
from jaxlib.mlir import ir

try:
    from jax._src import xla_bridge as _xla_bridge
    from jax._src.interpreters import mlir as _jax_mlir
    from jaxlib import _jax
except ImportError as e:  # pragma: no cover - depends on the installed jax
    raise ImportError(
        f"luxc.runtime needs jax internals (jax._src.interpreters.mlir, jaxlib._jax) that jax "
        f"{jax.__version__} does not have; install jax>=0.10.2,<0.11"
    ) from e


def ir_context() -> ir.Context:
    """A fresh MLIR context that can parse and print any module jax produces."""
    return _jax_mlir.make_ir_context()


def deserialize_module(data: bytes, context: ir.Context) -> ir.Module:
    """A portable artifact (``Exported.mlir_module_serialized``) as a module in ``context``."""
    with context:
        return _jax.mlir.deserialize_portable_artifact(data)


def serialize_module(module: ir.Module, target_version: str) -> bytes:
    """``module`` as a portable artifact for StableHLO ``target_version``."""
    return _jax.mlir.serialize_portable_artifact(
        module, target_version, _xla_bridge.get_backend().serialize_with_sdy)


# The persistent compilation cache, scoped to luxc's own compiles. jax keeps ONE process-wide
# cache object, initialised once from the jax_compilation_cache_dir option; luxc puts its own
# cache object there only for the duration of a luxc compile and puts jax's state back after, so
# the host program's own jits never see luxc's cache and no jax option is changed for good.
_scope_lock = threading.RLock()


def cache_interface() -> type:
    """The base class jax's compilation cache implementations derive from."""
    from jax._src.compilation_cache_interface import CacheInterface

    return CacheInterface


@contextlib.contextmanager
def compilation_cache_scope(cache: Any) -> Iterator[None]:
    """Within the block, jax's compiles read and write ``cache`` (an object with ``get(key)`` and
    ``put(key, value)``), whatever the compile time or size; before and after, jax's own."""
    from jax._src import compilation_cache, config

    with _scope_lock:
        with compilation_cache._cache_initialized_mutex:
            saved = (compilation_cache._cache, compilation_cache._cache_initialized,
                     compilation_cache._cache_checked, compilation_cache._cache_used)
            compilation_cache._cache = cache
            compilation_cache._cache_initialized = True
            compilation_cache._cache_checked = True
            compilation_cache._cache_used = True
        try:
            with config.persistent_cache_min_compile_time_secs(0.0), \
                    config.persistent_cache_min_entry_size_bytes(0):
                yield
        finally:
            with compilation_cache._cache_initialized_mutex:
                (compilation_cache._cache, compilation_cache._cache_initialized,
                 compilation_cache._cache_checked, compilation_cache._cache_used) = saved


def stable_custom_call_targets() -> set[str]:
    """The custom-call targets jax.export guarantees stable (what jax itself lets an exported
    module call)."""
    from jax._src.export import _export

    return set(_export._CUSTOM_CALL_TARGETS_GUARANTEED_STABLE)


def refine_shapes(module: ir.Module) -> ir.Module:
    """``module`` (a lowered module with static inputs) with every dynamic shape resolved, as
    jax refines it before compiling; raises ``ValueError`` when a shape stays dynamic."""
    return _jax_mlir.refine_polymorphic_shapes(module)


# jax's lowering of ``Exported.call`` for CPU always runs ``linalg.initialize_lapack()``, which
# imports scipy.linalg to find LAPACK: ~0.2 s, the largest part of luxc's first step on a small
# model, and needed only by the ``lapack_*`` custom calls (jax's CPU linear algebra). Within
# ``lapack_initialization(False)`` the calling thread's lowerings skip it; other threads and every
# lowering outside the block keep jax's behaviour, and jax's function is put back after the last
# block ends.
_lapack_lock = threading.Lock()
_lapack_local = threading.local()
_lapack_patch: dict[str, Any] = {"original": None, "open_blocks": 0}


def _ensure_backends_initialized(platforms: tuple[str, ...]) -> None:
    if not getattr(_lapack_local, "skip", False):
        _lapack_patch["original"](platforms)


def needs_lapack(custom_call_targets: set[str] | frozenset[str]) -> bool:
    """Whether a module with these custom-call targets calls a LAPACK kernel on CPU."""
    return any(t.startswith("lapack") for t in custom_call_targets)


@contextlib.contextmanager
def lapack_initialization(needed: bool) -> Iterator[None]:
    """Within the block, this thread's lowerings of ``Exported.call`` load LAPACK only if
    ``needed``; outside it, and in other threads, as jax does."""
    if needed:
        yield
        return
    from jax._src.export import _export

    with _lapack_lock:
        if _lapack_patch["open_blocks"] == 0:
            _lapack_patch["original"] = _export._ensure_backends_initialized
            _export._ensure_backends_initialized = _ensure_backends_initialized
        _lapack_patch["open_blocks"] += 1
    outer = getattr(_lapack_local, "skip", False)
    _lapack_local.skip = True
    try:
        yield
    finally:
        _lapack_local.skip = outer
        with _lapack_lock:
            _lapack_patch["open_blocks"] -= 1
            if _lapack_patch["open_blocks"] == 0:
                _export._ensure_backends_initialized = _lapack_patch["original"]


def release_staging_caches() -> None:
    """Drop what jax's tracing and lowering caches hold (jaxprs, lowered modules and the
    executables compiled from them), keeping every jitted function's C++ dispatch cache.

    An evicted luxc entry is otherwise kept alive there: those caches key weakly on jaxprs
    their own values refer to, so only their size bound (4096 entries) would free it, ~3-5 MiB
    per entry measured. ``jax.clear_caches()`` does this too but also empties the C++ dispatch
    caches of the user's own ``jax.jit`` functions, which would then retrace.
    """
    from jax._src import util

    util.clear_all_caches()


def direct_call(compiled: jax.stages.Compiled) -> object:
    """The C++ callable behind ``compiled(*args)``: the same argument checks and dispatch,
    without ``jax.stages.Compiled.__call__``'s Python frame (which builds it on first use and
    forwards to it). Falls back to ``compiled`` itself where jax has no C++ path."""
    call = compiled._executable.create_cpp_call(compiled._params)
    return compiled if call is None else call


def exclude_from_tracebacks(path: str) -> None:
    """Frames under ``path`` are not the user's: jax's op locations (the ``source_file:line``
    an op's metadata names) and its filtered tracebacks skip them, as equinox registers its own
    files. Registering the same path again does nothing."""
    from jax._src import source_info_util, traceback_util

    if path not in source_info_util._exclude_paths:
        source_info_util.register_exclusion(path)
        traceback_util.register_exclusion(path)


def excluded_from_tracebacks(filename: str) -> bool:
    """Whether jax counts ``filename`` as library code (jax, the standard library, a path given
    to :func:`exclude_from_tracebacks`), not the user's."""
    from jax._src import source_info_util

    return not source_info_util.is_user_filename(filename)


def with_trailing_buffers(exported: Any, module_serialized: bytes, avals: tuple) -> Any:
    """``exported`` with the module ``module_serialized``, which takes ``avals`` as new last
    arguments and returns them, in the same order, as new last results: called as
    ``call(*args, buffers) -> (outputs, buffers)``. Single-device, single-platform only; the
    result cannot be differentiated (jax's VJP of ``exported`` does not apply to it)."""
    import dataclasses

    from jax import tree_util

    k = len(avals)
    args, kwargs = tree_util.tree_unflatten(exported.in_tree, [0] * len(exported.in_avals))
    outs = tree_util.tree_unflatten(exported.out_tree, [0] * len(exported.out_avals))
    shaped = tuple(jax.core.ShapedArray(a.shape, a.dtype) for a in avals)
    n_in = len(exported.in_avals)
    return dataclasses.replace(
        exported,
        in_tree=tree_util.tree_structure(((*args, (0,) * k), kwargs)),
        out_tree=tree_util.tree_structure((outs, (0,) * k)),
        in_avals=(*exported.in_avals, *shaped), out_avals=(*exported.out_avals, *shaped),
        _in_named_shardings=(*exported._in_named_shardings, *(None,) * k),
        _out_named_shardings=(*exported._out_named_shardings, *(None,) * k),
        in_shardings_hlo=(*exported.in_shardings_hlo, *(None,) * k),
        out_shardings_hlo=(*exported.out_shardings_hlo, *(None,) * k),
        module_kept_var_idx=(*exported.module_kept_var_idx, *range(n_in, n_in + k)),
        mlir_module_serialized=module_serialized, _get_vjp=None)


def staged(x: Any) -> bool:
    """Whether ``x`` is a value traced into a program rather than one computed op by op: a
    tracer whose value is not known now (under ``jax.jit``/``jax.export``, or ``jax.vmap``).
    A ``jax.grad`` run op by op traces values it also knows: those are not staged."""
    if not isinstance(x, jax.core.Tracer):
        return False
    from jax._src import core  # jax.core.is_concrete is deprecated

    return not core.is_concrete(x)
