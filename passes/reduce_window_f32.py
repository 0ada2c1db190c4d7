"""reduce_window_f32: a ``stablehlo.reduce_window`` (max pooling, min pooling, a windowed sum) of
a bfloat16 or float16 array → the same windows over the array converted to float32, the result
converted once to the narrow type.

Why: XLA:CPU runs a narrow-type ``reduce-window`` as a slow scalar loop. The max pooling of
LeNet-5 in bf16 (b128, the 24×24×6 and 8×8×16 maps) took 1.09 and 0.37 ms (0.4 GFLOP/s, ``luxc
profile --ops``) where the same windows in float32 take 0.25 ms.

Why it is exact: every element converts to float32 exactly. A maximum or minimum picks one of
the elements, which converts back to the narrow type exactly: the result is bit-identical. A sum
adds the same addends in float32, as XLA:CPU did for the narrow type too, and the one
``convert`` rounds it as the original result was rounded (the order of the float32 additions
may differ, within float32 rounding before the final rounding).

Matched: single-input ``reduce_window``s of a bf16 or f16 operand and init value whose body is
one ``stablehlo.maximum``, ``stablehlo.minimum`` or ``stablehlo.add`` of its two arguments. The
window attributes are kept as they are; the init value is converted the same way (exact).
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._marks import marked_convert
from luxc.passes._match import region_op
from luxc.passes._rewrite import replace_each

NAME = "reduce_window_f32"
DESCRIPTION = "bf16/f16 max/min/sum reduce_window -> the same windows in f32 + one convert"

_BODIES = {"stablehlo.maximum": stablehlo.MaxOp, "stablehlo.minimum": stablehlo.MinOp,
           "stablehlo.add": stablehlo.AddOp}


def _plan(op: ir.Operation) -> tuple[ir.RankedTensorType, type] | None:
    if len(op.operands) != 2 or len(op.results) != 1:
        return None
    inner = region_op(op.regions[0])
    if inner is None or inner.name not in _BODIES:
        return None
    out = ir.RankedTensorType(op.results[0].type)
    if not isinstance(out.element_type, ir.BF16Type | ir.F16Type):
        return None
    if any(ir.RankedTensorType(v.type).element_type != out.element_type for v in op.operands):
        return None
    return out, _BODIES[inner.name]


def _wide(value: ir.Value) -> ir.Value:
    t = ir.RankedTensorType(value.type)
    return stablehlo.convert(ir.RankedTensorType.get(t.shape, ir.F32Type.get()), value)


def _rewrite(op: ir.Operation, plan: tuple[ir.RankedTensorType, type]) -> ir.Value:
    out, body = plan
    f32 = ir.F32Type.get()
    attributes = {name: op.attributes[name] for name in op.attributes}
    wide = ir.Operation.create(op.name, results=[ir.RankedTensorType.get(out.shape, f32)],
                               operands=[_wide(v) for v in op.operands],
                               attributes=attributes, regions=1)
    scalar = ir.RankedTensorType.get([], f32)
    block = wide.regions[0].blocks.append(scalar, scalar)
    with ir.InsertionPoint(block):
        stablehlo.ReturnOp([body(*block.arguments).result])
    return marked_convert(out, wide.results[0])


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of windowed reductions moved to float32."""
    return replace_each(module, "stablehlo.reduce_window", _plan, _rewrite)
