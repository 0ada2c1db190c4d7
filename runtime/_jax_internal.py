"""Every use of jax-internal API in luxc, so a jax upgrade touches one file.

* ``ir_context()`` — an MLIR context with every dialect jax emits (func, stablehlo, chlo, sdy…);
  a bare ``ir.Context()`` cannot parse jax's modules.
* ``deserialize_module`` / ``serialize_module`` — the portable-artefact (VHLO) round trip jax's
  own ``jax.export`` uses. Unlike the public ``stablehlo.serialize_portable_artifact`` binding,
  it handles the Shardy (``sdy``) sharding attributes of multi-device modules.
* ``reset_compilation_cache()`` — make jax re-read the persistent cache configuration.
"""

from __future__ import annotations

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
    """A portable artefact (``Exported.mlir_module_serialized``) as a module in ``context``."""
    with context:
        return _jax.mlir.deserialize_portable_artifact(data)


def serialize_module(module: ir.Module, target_version: str) -> bytes:
    """``module`` as a portable artefact for StableHLO ``target_version``."""
    return _jax.mlir.serialize_portable_artifact(
        module, target_version, _xla_bridge.get_backend().serialize_with_sdy)


def reset_compilation_cache() -> None:
    """Make jax re-read the persistent cache configuration (it initialises the cache once)."""
    from jax._src import compilation_cache

    compilation_cache.reset_cache()
