"""Reading a serialized StableHLO module's operations (what it contains, not what it computes)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from jaxlib.mlir import ir

from luxc.runtime._jax_internal import deserialize_module, ir_context


def walk_operation(op: ir.Operation, visit: Callable[[ir.Operation], None]) -> None:
    """Call ``visit`` on ``op`` and every operation nested in it."""
    visit(op)
    for region in op.regions:
        for block in region:
            for child in block:
                walk_operation(child.operation, visit)


def walk(serialized: bytes, visit: Callable[[ir.Operation], None]) -> None:
    """Call ``visit`` on every operation of the portable artifact ``serialized``, nested ones
    included (the operations live only during the call)."""
    with ir_context() as ctx:
        walk_operation(deserialize_module(serialized, ctx).operation, visit)


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


# Summaries taken while a module was already parsed (luxc's passes parse it anyway), so the
# compile does not parse it again: keyed by the serialized bytes, the last few only, each taken
# once.
_KNOWN: dict[bytes, ModuleSummary] = {}
_KNOWN_MAX = 8


def summarise(module: ir.Module) -> ModuleSummary:
    """The :class:`ModuleSummary` of a parsed module."""
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

    walk_operation(module.operation, visit)
    return ModuleSummary(frozenset(names), largest, frozenset(targets))


def remember(serialized: bytes, module: ir.Module) -> None:
    """Take the summary of ``module`` (whose serialized form is ``serialized``) now, for a later
    :func:`summary` of the same bytes."""
    if len(_KNOWN) >= _KNOWN_MAX:
        _KNOWN.pop(next(iter(_KNOWN)))
    _KNOWN[serialized] = summarise(module)


def known_summary(serialized: bytes) -> ModuleSummary | None:
    """The summary :func:`remember` took of ``serialized``, left for :func:`summary`; ``None``
    if it took none."""
    return _KNOWN.get(serialized)


def summary(serialized: bytes) -> ModuleSummary:
    """The :class:`ModuleSummary` of ``serialized`` (parsed unless :func:`remember` saw it)."""
    known = _KNOWN.pop(serialized, None)  # one use: the compile right after the passes
    if known is not None:
        return known
    with ir_context() as ctx:
        return summarise(deserialize_module(serialized, ctx))
