"""Reading a serialized StableHLO module's operations (what it contains, not what it computes)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ModuleSummary:
    """What luxc's per-module XLA defaults look at: the operations a module uses, the targets of
    its ``stablehlo.custom_call`` operations, and the bytes of its largest statically shaped
    tensor, a float narrower than 32 bits counted as 4 bytes
    (an upper bound on any one buffer XLA allocates for it: XLA:CPU computes bfloat16, float16
    and float8 matrix products, sorts and cumulative sums in float32 and keeps the float32
    result as a temporary)."""

    op_names: frozenset[str]
    largest_tensor_bytes: int
    custom_call_targets: frozenset[str] = frozenset()


def _tensor_bytes(value_type: ir.Type) -> int:
    if not isinstance(value_type, ir.RankedTensorType) or not value_type.has_static_shape:
        return 0
    element, parts = value_type.element_type, 1
    if isinstance(element, ir.ComplexType):
        element, parts = element.element_type, 2
    bits = getattr(element, "width", 64)  # a type of unknown width counts as 8 bytes
    if isinstance(element, ir.FloatType):
        bits = max(bits, 32)
    return math.prod(value_type.shape) * parts * max(1, bits // 8)


def summary(serialized: bytes) -> ModuleSummary:
    """The :class:`ModuleSummary` of ``serialized``."""
    names: set[str] = set()
    targets: set[str] = set()
    largest = 0

    def visit(op: ir.Operation) -> None:
        nonlocal largest
        names.add(op.name)
        if op.name == "stablehlo.custom_call":
            targets.add(ir.StringAttr(op.attributes["call_target_name"]).value)
        for result in op.results:
            largest = max(largest, _tensor_bytes(result.type))

    walk(serialized, visit)
    return ModuleSummary(frozenset(names), largest, frozenset(targets))
