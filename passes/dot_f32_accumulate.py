"""dot_f32_accumulate: a ``dot_general`` (without batch axes) of bfloat16 (or float16) operands
whose result is bfloat16 (float16) → the same op with a float32 result, converted once to the
narrow type.

What jax writes for ``x_bf16 @ w_bf16`` (and for every dot of its transpose) has a bfloat16
result, and XLA:CPU then runs it *slower than float32*: it converts both operands to float32,
multiplies in float32 and rounds the result (2048×256×768: 8.2 ms against 5.2 ms float32,
NOTES-toolchain "bf16 on XLA:CPU"). With a float32 result type the same bfloat16 operands go
to the CPU's bfloat16 matrix kernels (AVX-512 BF16), which accumulate in float32: 2.4 ms.

Why it is exact in its own terms: the products and sums are those of the original op,
accumulated in float32 — which is what XLA:CPU did for the narrow result too, before rounding
it — and the one ``convert`` rounds the float32 sum to the narrow type, as the original op's
result was rounded. A kernel may order the float32 additions differently; the values agree
within float32 rounding before the final rounding to bfloat16 (the test checks compiled =
eager within the bfloat16 bound).

Matched: no batch axes (XLA:CPU's batched-dot kernel rejects bf16 x bf16 -> f32 at run time:
"Unsupported element type for DotThunk::Execute"), and both operands and the result have the
same 16-bit float element type (bf16 or f16).
Attributes (dimension numbers, precision, algorithm) are kept as they are.
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._marks import marked_convert
from luxc.passes._rewrite import replace_each

NAME = "dot_f32_accumulate"
DESCRIPTION = "bf16/f16 dot_general with a bf16/f16 result -> f32 result + one convert"



def _narrow(t: ir.Type) -> bool:
    return isinstance(t, ir.BF16Type | ir.F16Type)


def _plan(op: ir.Operation) -> ir.RankedTensorType | None:
    dims = stablehlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    if list(dims.lhs_batching_dimensions):
        return None  # XLA:CPU's batched-dot kernel has no bf16 x bf16 -> f32 form (it fails)
    out = ir.RankedTensorType(op.results[0].type)
    element = out.element_type
    if not _narrow(element):
        return None
    if any(ir.RankedTensorType(v.type).element_type != element for v in op.operands):
        return None
    return out


def _rewrite(op: ir.Operation, out: ir.RankedTensorType) -> ir.Value:
    wide = ir.RankedTensorType.get(out.shape, ir.F32Type.get())
    attributes = {name: op.attributes[name] for name in op.attributes}
    new = ir.Operation.create(op.name, results=[wide], operands=list(op.operands),
                              attributes=attributes)
    return marked_convert(out, new.results[0])


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of ops given a float32 result."""
    return replace_each(module, "stablehlo.dot_general", _plan, _rewrite)
