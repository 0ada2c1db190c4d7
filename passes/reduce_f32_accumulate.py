"""reduce_f32_accumulate: a sum (``stablehlo.reduce`` with an ``add`` body) of a bfloat16 or
float16 array → the same sum of the array converted to float32, its result converted once to
the narrow type.

Why: the bias gradients of a mixed-precision step are bf16 sums over the batch (the transpose
of the bias broadcast). XLA:CPU computes a narrow-type reduce in float32 anyway
(``FloatNormalization``), but its optimised module splits the bf16 256×512 sums of the MLP
784-512-512-10 b256 step into a ``reduce-window`` over blocks of 32 rows and a second reduce,
and that ``reduce-window`` loop is slow: 0.8 ms for the two sums (``luxc profile --ops``), more
than a bf16 matrix product of the same rows. The same sums in float32 are plain reduces there.

Why it is exact in its own terms: every addend is the same (a bf16 or f16 value converts to
float32 exactly), the additions are done in float32 — as XLA:CPU did them for the narrow
reduce — and the one ``convert`` rounds the float32 sum to the narrow type, as the original
op's result was rounded. Only the order of the float32 additions may differ (within float32
rounding before the final rounding).

Matched: single-operand reduces whose body is one ``stablehlo.add`` of its two arguments, of a
bf16 or f16 operand and init value. The init value is converted the same way (exact).
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._marks import marked_convert
from luxc.passes._match import region_op
from luxc.passes._rewrite import replace_each

NAME = "reduce_f32_accumulate"
DESCRIPTION = "bf16/f16 add-reduce -> f32 add-reduce of the converted operand + one convert"


def _narrow(t: ir.Type) -> bool:
    return isinstance(t, ir.BF16Type | ir.F16Type)


def _plan(op: ir.Operation) -> ir.RankedTensorType | None:
    if len(op.operands) != 2 or len(op.results) != 1:
        return None
    inner = region_op(op.regions[0])
    if inner is None or inner.name != "stablehlo.add":
        return None
    out = ir.RankedTensorType(op.results[0].type)
    if not _narrow(out.element_type):
        return None
    if any(ir.RankedTensorType(v.type).element_type != out.element_type for v in op.operands):
        return None
    return out


def _wide(value: ir.Value) -> ir.Value:
    t = ir.RankedTensorType(value.type)
    return stablehlo.convert(ir.RankedTensorType.get(t.shape, ir.F32Type.get()), value)


def _rewrite(op: ir.Operation, out: ir.RankedTensorType) -> ir.Value:
    f32 = ir.F32Type.get()
    scalar = ir.RankedTensorType.get([], f32)
    wide = stablehlo.ReduceOp([ir.RankedTensorType.get(out.shape, f32)],
                              [_wide(op.operands[0])], [_wide(op.operands[1])],
                              ir.DenseI64ArrayAttr(op.attributes["dimensions"]))
    block = wide.regions[0].blocks.append(scalar, scalar)
    with ir.InsertionPoint(block):
        stablehlo.ReturnOp([stablehlo.AddOp(*block.arguments).result])
    return marked_convert(out, wide.results[0])


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of sums moved to float32."""
    return replace_each(module, "stablehlo.reduce", _plan, _rewrite)
