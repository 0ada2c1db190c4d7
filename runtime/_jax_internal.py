"""Every use of jax-internal API in luxc, so a jax upgrade touches one file.

* ``ir_context()`` — an MLIR context with every dialect jax emits (func, stablehlo, chlo, sdy…);
  a bare ``ir.Context()`` cannot parse jax's modules.
"""

from __future__ import annotations

import jax
from jaxlib.mlir import ir

try:
    from jax._src.interpreters import mlir as _jax_mlir
except ImportError as e:  # pragma: no cover - depends on the installed jax
    raise ImportError(
        f"luxc.runtime needs jax._src.interpreters.mlir.make_ir_context, missing in jax "
        f"{jax.__version__}; install jax>=0.10.2,<0.11"
    ) from e


def ir_context() -> ir.Context:
    """A fresh MLIR context that can parse and print any module jax produces."""
    return _jax_mlir.make_ir_context()


def reset_compilation_cache() -> None:
    """Make jax re-read the persistent cache configuration (it initialises the cache once)."""
    from jax._src import compilation_cache

    compilation_cache.reset_cache()
