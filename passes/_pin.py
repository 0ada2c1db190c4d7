"""A value kept by XLA as a row-major array of its own, for the dot passes.

XLA gives a ``transpose`` a permuted layout (a relabelling, not a copy), and an
``optimization_barrier`` keeps whatever layout its operand has; YNNPACK refuses a dot whose
operand is not row-major, and XLA then runs a bf16 dot in float32 behind converts. A reshape to a
leading unit axis before the barrier and back after it makes XLA write the row-major copy.

What the barrier does not do: XLA:CPU removes every ``optimization_barrier`` before its final
HLO, so a pin cannot keep a cheap producer from being fused into its consumer (a scan slice
pinned this way was fused all the same, benchmarks/README.md); it fixes the layout only.
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo


def row_major(value: ir.Value) -> ir.Value:
    """``value`` lifted to a leading unit axis, kept by an ``optimization_barrier``, lowered
    again: the same values, which XLA does not lay out permuted."""
    t = ir.RankedTensorType(value.type)
    lifted = ir.RankedTensorType.get([1, *t.shape], t.element_type)
    (kept,) = stablehlo.OptimizationBarrierOp([stablehlo.ReshapeOp(lifted, value).result]).results
    return stablehlo.ReshapeOp(t, kept).result
