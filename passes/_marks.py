"""The marks luxc's passes put on the conversions they write, for a later pass of the same
pipeline to read; :func:`luxc.passes.run_pipeline` removes every mark before its first pass (a
module from elsewhere may carry one) and after its last.

``ROUNDS_RESULT`` marks the ``convert`` that rounds an op's float32 result to the op's own
bf16/f16 type, when a pass computes a bf16 op in float32 (``dot_f32_accumulate``,
``reduce_f32_accumulate``, ``elementwise_bf16_f32``, ...): the rounding the original op did.
``elementwise_bf16_f32`` may drop such a rounding between two links of a chain, never a
conversion the program wrote itself (a user's ``astype``, the mixed-precision casts).
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

ROUNDS_RESULT = "luxc.rounds_result"
WIDENS = "luxc.widens"
_ALL = (ROUNDS_RESULT, WIDENS)


def marked_convert(result_type: ir.Type, value: ir.Value, mark: str = ROUNDS_RESULT) -> ir.Value:
    """``convert(value)`` to ``result_type``, carrying ``mark``."""
    convert = stablehlo.ConvertOp(result_type, value)
    convert.operation.attributes[mark] = ir.UnitAttr.get()
    return convert.result


def has_mark(op: ir.Operation, mark: str) -> bool:
    return mark in op.attributes


def strip_marks(module: ir.Module) -> None:
    """Remove every mark from ``module``."""
    def visit(op: ir.Operation) -> ir.WalkResult:
        for mark in _ALL:
            if mark in op.attributes:
                del op.attributes[mark]
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
