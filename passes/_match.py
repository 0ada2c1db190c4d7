"""Small matching helpers shared by the passes."""

from __future__ import annotations

import numpy as np
from jaxlib.mlir import ir


def op_of(value: ir.Value) -> ir.Operation | None:
    """The operation defining ``value`` (``None`` for a block argument)."""
    owner = value.owner
    if isinstance(owner, ir.Block):
        return None
    return owner.operation if hasattr(owner, "operation") else owner


def producer(value: ir.Value) -> ir.Operation | None:
    """The defining operation of ``value``, looking through identity ``stablehlo.convert``s
    (jax emits them around element-wise ops; they do nothing)."""
    op = op_of(value)
    while op is not None and op.name == "stablehlo.convert" and op.operands[0].type == op.results[0].type:
        op = op_of(op.operands[0])
    return op


def source(value: ir.Value) -> ir.Value:
    """``value`` with identity converts stripped."""
    op = op_of(value)
    while op is not None and op.name == "stablehlo.convert" and op.operands[0].type == op.results[0].type:
        value = op.operands[0]
        op = op_of(value)
    return value


def splat_value(value: ir.Value) -> float | None:
    """The scalar of a splat constant (possibly broadcast), else ``None``."""
    op = producer(value)
    if op is not None and op.name == "stablehlo.broadcast_in_dim":
        op = producer(op.operands[0])
    if op is None or op.name != "stablehlo.constant":
        return None
    attr = op.attributes["value"]
    if isinstance(attr, ir.DenseElementsAttr) and attr.is_splat:
        try:
            return float(np.asarray(ir.DenseElementsAttr(attr).get_splat_value().value))
        except (AttributeError, TypeError, ValueError):
            return None
    return None


def count_ops(module: ir.Module) -> int:
    """Number of operations in ``module`` (all regions, the module op itself excluded)."""
    total = 0

    def visit(op: ir.Operation) -> ir.WalkResult:
        nonlocal total
        total += 1
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return total - 1
