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


def _is_identity(op: ir.Operation) -> bool:
    # An identity convert (jax emits them around element-wise ops) or a sharding constraint
    # (jax adds them in multi-device modules): neither changes the value.
    if op.name == "sdy.sharding_constraint":
        return True
    return op.name == "stablehlo.convert" and op.operands[0].type == op.results[0].type


def producer(value: ir.Value) -> ir.Operation | None:
    """The defining operation of ``value``, looking through identity converts and sharding
    constraints."""
    op = op_of(value)
    while op is not None and _is_identity(op):
        op = op_of(op.operands[0])
    return op


def source(value: ir.Value) -> ir.Value:
    """``value`` with identity converts and sharding constraints stripped."""
    op = op_of(value)
    while op is not None and _is_identity(op):
        value = op.operands[0]
        op = op_of(value)
    return value


def region_op(region: ir.Region) -> ir.Operation | None:
    """The one computation of a reduction-style region: ``^bb(args): r = op(args); return r``
    (sharding constraints on ``r`` allowed), else ``None``."""
    block = region.blocks[0]
    ops = [o.operation for o in block.operations]
    body = [o for o in ops[:-1] if not _is_identity(o)]
    if len(body) != 1 or len(ops[-1].operands) != 1:
        return None
    inner = body[0]
    if list(inner.operands) != list(block.arguments):
        return None
    if producer(ops[-1].operands[0]) != inner:
        return None
    return inner


def constant_value(op: ir.Operation | None) -> ir.Attribute | None:
    """The ``value`` attribute of a ``stablehlo.constant``, else ``None`` (also for the
    element types jaxlib's bindings cannot cast, such as complex)."""
    if op is None or op.name != "stablehlo.constant":
        return None
    try:
        return op.attributes["value"]
    except TypeError:
        return None


def splat_value(value: ir.Value) -> float | None:
    """The scalar of a splat constant (possibly broadcast), else ``None``."""
    op = producer(value)
    if op is not None and op.name == "stablehlo.broadcast_in_dim":
        op = producer(op.operands[0])
    attr = constant_value(op)
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
