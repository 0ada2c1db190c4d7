"""maxpool_grad_select: the gradient of a non-overlapping max-pool, ``select_and_scatter``,
rewritten as strided slices, compares and selects.

XLA:CPU lowers ``select_and_scatter`` to a scalar loop that scatters one window at a time; on a
LeNet step it costs more than a whole convolution. When windows do not overlap (stride = window,
no padding, every pooled axis divisible by its window) each input element belongs to exactly one
window, and the scatter is a selection: for window offset ``o`` (in row-major order),

    x_o   = x[o_0::w_0, o_1::w_1, ...]                  (the pooled shape)
    m     = max_o x_o                                   (the window maximum)
    sel_o = (x_o == m) and not (x_p == m for any p < o)  (the FIRST maximum)
    g_o   = sel_o ? source : init

and the result interleaves the ``g_o`` back into the input's shape (reshape + concatenate).

Why it is exact: ``select_and_scatter`` with select ``a >= b`` keeps the current choice unless a
later element is strictly greater, i.e. it selects the first maximum of each window in row-major
order, and adds the source value to ``init`` at that one position; with non-overlapping windows
no position receives two values, so the result is ``init + source`` there and ``init`` elsewhere
— what the selects compute (``init`` must be ``0`` for ``init + source == source``). Windows
holding a NaN are the one difference: there the rewrite gives ``init`` everywhere. A bf16 or
f16 gradient is selected in float32 and converted back once: the same bits, since nothing here
rounds.
"""

from __future__ import annotations

import itertools
import math

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._marks import marked_convert
from luxc.passes._match import region_op, splat_value
from luxc.passes._rewrite import replace_each

NAME = "maxpool_grad_select"
DESCRIPTION = "non-overlapping max-pool gradient (select_and_scatter) -> slices + selects"


def _ints(op: ir.Operation, name: str, rank: int, default: int) -> list[int]:
    if name not in op.attributes:
        return [default] * rank
    return list(ir.DenseI64ArrayAttr(op.attributes[name]))


def _region_is(op: ir.Operation, index: int, body: str, direction: str | None = None) -> bool:
    inner = region_op(op.regions[index])
    if inner is None or inner.name != body:
        return False
    if direction is not None:
        expected = f"#stablehlo<comparison_direction {direction}>"
        return str(inner.attributes["comparison_direction"]) == expected
    return True


def _matches(op: ir.Operation) -> tuple[list[int], list[int]] | None:
    operand, source = op.operands[0], op.operands[1]
    shape = list(ir.RankedTensorType(operand.type).shape)
    rank = len(shape)
    window = _ints(op, "window_dimensions", rank, 1)
    strides = _ints(op, "window_strides", rank, 1)
    padding = ir.DenseIntElementsAttr(op.attributes["padding"]) if "padding" in op.attributes else None
    if padding is not None and any(int(v) for v in padding):
        return None
    if window != strides or any(d % w for d, w in zip(shape, window)):
        return None
    if list(ir.RankedTensorType(source.type).shape) != [d // w for d, w in zip(shape, window)]:
        return None
    if splat_value(op.operands[2]) != 0.0:
        return None
    if not (_region_is(op, 0, "stablehlo.compare", "GE") and _region_is(op, 1, "stablehlo.add")):
        return None
    return shape, window


def _rewrite(op: ir.Operation, shape: list[int], window: list[int]) -> ir.Value:
    x, source, init = op.operands
    narrow = ir.RankedTensorType(op.results[0].type)
    if isinstance(narrow.element_type, ir.BF16Type | ir.F16Type):
        # Selected in float32 and converted back once: every value is a bf16/f16 value, and
        # max, compare and select do not round, so the result is the same bits; in the narrow
        # type XLA:CPU rounds after every max and select (a convert pair per op in the loop).
        x, source, init = (_widened(v) for v in (x, source, init))
        return marked_convert(narrow, _selected(x, source, init, shape, window))
    return _selected(x, source, init, shape, window)


def _widened(value: ir.Value) -> ir.Value:
    t = ir.RankedTensorType(value.type)
    return stablehlo.convert(ir.RankedTensorType.get(t.shape, ir.F32Type.get()), value)


def _selected(x: ir.Value, source: ir.Value, init: ir.Value, shape: list[int],
              window: list[int]) -> ir.Value:
    rank = len(shape)
    pooled = [d // w for d, w in zip(shape, window)]
    element = ir.RankedTensorType(x.type).element_type
    pooled_type = ir.RankedTensorType.get(pooled, element)
    zeros = stablehlo.BroadcastInDimOp(pooled_type, init, []).result
    offsets = list(itertools.product(*(range(w) for w in window)))  # row-major window order
    slices = {o: stablehlo.SliceOp(x, list(o), shape, window).result for o in offsets}
    m = slices[offsets[0]]
    for o in offsets[1:]:
        m = stablehlo.MaxOp(m, slices[o]).result
    eq_dir = stablehlo.ComparisonDirectionAttr.get("EQ")
    found = None
    interleaved = ir.RankedTensorType.get(
        [d for p in pooled for d in (p, 1)], element)
    pieces = {}
    for o in offsets:
        eq = stablehlo.CompareOp(slices[o], m, eq_dir).result
        sel = eq if found is None else stablehlo.AndOp(eq, stablehlo.NotOp(found).result).result
        found = eq if found is None else stablehlo.OrOp(found, eq).result
        chosen = stablehlo.SelectOp(sel, source, zeros).result
        pieces[o] = stablehlo.ReshapeOp(interleaved, chosen).result

    def assemble(prefix: tuple[int, ...]) -> ir.Value:
        d = len(prefix)
        if d == rank:
            return pieces[prefix]
        parts = [assemble(prefix + (i,)) for i in range(window[d])]
        return parts[0] if len(parts) == 1 else stablehlo.ConcatenateOp(parts, 2 * d + 1).result

    full = assemble(())
    return stablehlo.ReshapeOp(ir.RankedTensorType.get(shape, element), full).result


def _plan(op: ir.Operation) -> tuple[list[int], list[int]] | None:
    match = _matches(op)
    return match if match is not None and math.prod(match[1]) <= 64 else None


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of select_and_scatter ops replaced."""
    return replace_each(module, "stablehlo.select_and_scatter", _plan,
                        lambda op, plan: _rewrite(op, *plan))
