"""dus_bf16_bits: a bfloat16 ``dynamic_update_slice`` → the same update on the values' 16-bit
integer patterns (``bitcast_convert`` to ``ui16`` and back).

Why: XLA:CPU (jaxlib 0.10.2) has no bfloat16 ``dynamic-update-slice``: its float normalisation
converts the whole buffer to float32, updates the slice and converts the whole buffer back. In a
``lax.scan`` that stacks bf16 residuals (``Stack``, the GPT in bf16) this happens once an
iteration on the whole ``(n, ...)`` stack: every iteration reads and writes all ``n`` slices,
and the update is no longer in place. On 16-bit integers XLA updates the one slice in place.

Why it is exact: a ``bitcast_convert`` between bf16 and ui16 reinterprets the same 16 bits, and a
``dynamic_update_slice`` moves bits without arithmetic; the indices are the original ones.
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._rewrite import replace_each

NAME = "dus_bf16_bits"
DESCRIPTION = "bf16 dynamic_update_slice -> the same update on ui16 bit patterns (in place on XLA:CPU)"


def _as(value: ir.Value, element: ir.Type) -> ir.Value:
    t = ir.RankedTensorType(value.type)
    return stablehlo.BitcastConvertOp(ir.RankedTensorType.get(t.shape, element), value).result


def _plan(op: ir.Operation) -> bool | None:
    t = ir.RankedTensorType(op.results[0].type)
    return True if isinstance(t.element_type, ir.BF16Type) and t.has_static_shape else None


def _rewrite(op: ir.Operation, _matched: bool) -> ir.Value:
    u16 = ir.IntegerType.get_unsigned(16)
    buffer, update, *indices = op.operands
    updated = stablehlo.DynamicUpdateSliceOp(_as(buffer, u16), _as(update, u16), indices).result
    return _as(updated, ir.BF16Type.get())


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of updates rewritten."""
    return replace_each(module, "stablehlo.dynamic_update_slice", _plan, _rewrite)
