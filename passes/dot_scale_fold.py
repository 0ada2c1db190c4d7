"""dot_scale_fold: a multiply or divide by a scalar constant next to a ``dot_general`` moves to
the smallest tensor of that product — the left operand, the right operand or the result.

Where it comes from: attention written as users write it, ``softmax(q·kᵀ / √d)``. The scale
lands on the ``(batch, heads, T, T)`` logits, ``T/d`` times larger than ``q``; autodiff puts a
second one on their cotangent, which feeds two more products. On XLA:CPU each is a pass over a
``T×T`` tensor per head, and the broadcast constant is written out in full when the multiply
joins a library (YNNPACK) fusion: on the transformer block, a 4 MiB ``broadcast`` of ``0.125``
every step. In the CPU default pipeline: on the transformer block it was the fastest variant
of ``python -m benchmarks.ablation`` in two idle runs, 1.00× and 1.01× against the default's
1.03× and 1.05× (medians of per-round ratios to the fastest).

Two forms, each rewritten to the same product with the scale on the smallest tensor::

    (a · b) ∘ c  →  (a ∘ c) · b   (or a · (b ∘ c))        where ∘ is × or ÷
    (x ∘ c) · b  →  x · (b ∘ c)   (or (x · b) ∘ c)

In the second form ``x ∘ c`` may have other users; each product is rewritten on its own and the
scaled ``x`` is dropped once nothing reads it.

Why it is exact in real arithmetic: a dot product is linear in each operand, ``Σ (c·a)·b =
c·Σ a·b``. In floating point the products are rounded once more or less in another place: for a
power-of-two ``c`` (``1/√64``) the values are identical unless a product overflows or underflows;
otherwise they agree to a few ulps, which the end-to-end test bounds.

Matched: ``c`` a finite, non-zero splat constant; the operands and the result of the product
share one element type (a mixed-precision product, bf16 in and float32 out, is left alone: the
scale would round differently); no ``algorithm`` attribute; the new home strictly smaller.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._match import producer, splat_value
from luxc.passes._rewrite import apply_greedily

NAME = "dot_scale_fold"
DESCRIPTION = "(a.b)*c -> (a*c).b: a scalar scale next to a dot_general moves to its smallest tensor"

_SCALES = ("stablehlo.multiply", "stablehlo.divide")


class Scale(NamedTuple):
    """``value = x * c`` (``op == "stablehlo.multiply"``) or ``x / c`` (``"stablehlo.divide"``)."""

    x: ir.Value
    c: float
    op: str


def _size(value: ir.Value) -> int:
    return math.prod(ir.RankedTensorType(value.type).shape)


def scale_of(op: ir.Operation) -> Scale | None:
    """``op`` as ``x ∘ c`` with ``c`` a finite non-zero splat constant, else ``None``."""
    if op.name not in _SCALES:
        return None
    lhs, rhs = op.operands
    candidates = [(lhs, splat_value(rhs))]
    if op.name == "stablehlo.multiply":
        candidates.append((rhs, splat_value(lhs)))
    for x, c in candidates:
        if c is not None and math.isfinite(c) and c != 0.0 and splat_value(x) is None:
            return Scale(x, c, op.name)
    return None


def _plain_dot(op: ir.Operation) -> bool:
    if op.name != "stablehlo.dot_general" or "algorithm" in op.attributes:
        return False
    types = {ir.RankedTensorType(v.type).element_type for v in (*op.operands, op.results[0])}
    return len(types) == 1 and isinstance(next(iter(types)), ir.FloatType)


def _apply(scale: Scale, value: ir.Value) -> ir.Value:
    """``value ∘ c`` with ``c`` a splat constant of ``value``'s type."""
    tensor = ir.RankedTensorType(value.type)
    attr = ir.DenseElementsAttr.get_splat(tensor, ir.FloatAttr.get(tensor.element_type, scale.c))
    c = stablehlo.ConstantOp(attr).result
    op = stablehlo.MulOp if scale.op == "stablehlo.multiply" else stablehlo.DivOp
    return op(value, c).result


def _dot_like(dot: ir.Operation, lhs: ir.Value, rhs: ir.Value) -> ir.Value:
    """``dot`` (same result type and attributes) on new operands."""
    attributes = {name: dot.attributes[name] for name in dot.attributes}
    new = ir.Operation.create("stablehlo.dot_general", results=[dot.results[0].type],
                              operands=[lhs, rhs], attributes=attributes)
    return new.results[0]


def _scaled_dot(dot: ir.Operation, operands: list[ir.Value], scale: Scale) -> ir.Value | None:
    """``dot(operands) ∘ c`` with the scale on the smallest of the two operands and the result,
    or ``None`` when none is smaller than ``scale.x`` (the tensor it is on now)."""
    sizes = [_size(operands[0]), _size(operands[1]), _size(dot.results[0])]
    home = min(range(3), key=lambda i: (sizes[i], i))
    if sizes[home] >= _size(scale.x):
        return None
    if home == 2:
        return _apply(scale, _dot_like(dot, *operands))
    operands = list(operands)
    operands[home] = _apply(scale, operands[home])
    return _dot_like(dot, *operands)


def _fold_result_scale(op: ir.Operation) -> ir.Value | None:
    """``(a · b) ∘ c`` with the product used here only → the scale on ``a`` or ``b``."""
    scale = scale_of(op)
    dot = producer(scale.x) if scale is not None else None
    if dot is None or not _plain_dot(dot) or len(list(dot.results[0].uses)) != 1:
        return None
    return _scaled_dot(dot, list(dot.operands), Scale(op.results[0], scale.c, scale.op))


def _fold_operand_scale(op: ir.Operation) -> ir.Value | None:
    """``(x ∘ c) · b`` → ``x · (b ∘ c)`` or ``(x · b) ∘ c``."""
    if not _plain_dot(op):
        return None
    for i in (0, 1):
        scaled = producer(op.operands[i])
        scale = scale_of(scaled) if scaled is not None else None
        if scale is None or scale.x.type != op.operands[i].type:
            continue
        operands = list(op.operands)
        operands[i] = scale.x
        rewritten = _scaled_dot(op, operands, scale)
        if rewritten is not None:
            return rewritten
    return None


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of scales moved."""
    rewrites = 0

    def pattern(build):
        def rewrite(op: ir.Operation, rewriter) -> bool:
            nonlocal rewrites
            with rewriter.ip, op.location:
                new = build(op.operation)
            if new is None:
                return True
            rewriter.replace_op(op, [new])
            rewrites += 1
            return False
        return rewrite

    apply_greedily(module, [(name, pattern(_fold_result_scale)) for name in _SCALES]
                   + [("stablehlo.dot_general", pattern(_fold_operand_scale))])
    return rewrites
