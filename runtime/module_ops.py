"""Reading a serialized StableHLO module's operations (what it contains, not what it computes)."""

from __future__ import annotations

from collections.abc import Callable

from jaxlib.mlir import ir

from luxc.runtime._jax_internal import deserialize_module, ir_context


def walk(serialized: bytes, visit: Callable[[ir.Operation], None]) -> None:
    """Call ``visit`` on every operation of the portable artefact ``serialized``, nested ones
    included (the operations live only during the call)."""

    def recurse(op: ir.Operation) -> None:
        visit(op)
        for region in op.regions:
            for block in region:
                for child in block:
                    recurse(child.operation)

    with ir_context() as ctx:
        recurse(deserialize_module(serialized, ctx).operation)


def op_names(serialized: bytes) -> set[str]:
    """The names of the operations in ``serialized`` (``"stablehlo.convolution"`` …)."""
    names: set[str] = set()
    walk(serialized, lambda op: names.add(op.name))
    return names
