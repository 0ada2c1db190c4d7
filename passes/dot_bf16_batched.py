"""dot_bf16_batched: a batched ``dot_general`` of bfloat16 operands with a bfloat16 result (the
attention dots of a bf16 transformer: ``q·kᵀ``, ``p·v`` and their four gradients) → the same
product with a float32 result and one ``convert``, its left operand made ``[batch..., m, k]``.

Why: XLA:CPU (jaxlib 0.10.2) runs a dot in bfloat16 only when YNNPACK claims it, and YNNPACK
claims ``bf16 × bf16 → f32`` only (``xla/backends/cpu/ynn_support.cc``, ``IsDotSupportedByYnn``),
with row-major layouts and a left operand contracted over its last axis. Every other bf16 dot is
upcast: both operands converted to float32, multiplied in float32, the result rounded. On the
bf16 transformer block (B16 T128 4 heads of 64) one ``q·kᵀ`` took 1.85 ms as jax writes it
against 0.62 ms with a float32 result, and the whole step 73.0 against 65.5 ms (interleaved in
one process; ``benchmarks/README.md``, "Levers").

The rewrite, for a ``dot_general`` with batch axes, one contracting and one free axis per
operand, bf16 operands and a bf16 result:

- the result type becomes float32, and one ``convert`` rounds it to bfloat16;
- a left operand contracted over an axis before its free axis (the gradient dots ``pᵀ·g``) is
  transposed explicitly into ``[batch..., m, k]``;
- that transposed copy, and an operand that is a ``stablehlo.transpose`` already (jax writes
  the forward ``p·v`` as ``vᵀ·pᵀ``), is kept as a row-major array of its own: lifted to a
  leading unit axis, behind an ``optimization_barrier``, lowered again. XLA gives a transpose a
  permuted layout, and a barrier alone keeps that layout: YNNPACK rejects the dot and XLA runs
  it in float32 behind two converts. On the bf16 block that was the forward ``p·v`` and its
  gradient: 2.1-2.9 ms each in float32 against 0.5-0.6 ms in bfloat16, the step 26.2 against
  23.5 ms and the bf16 GPT's 107.3 against 100.5 ms (one process a side, alternating, eight
  and four each, glibc keeping freed memory in both, 17:25 UTC 2026-12-05).

Why it is exact in its own terms: a transpose, a unit-axis reshape and a barrier move or keep
values without changing any; the products and sums are those of the original op, which
XLA:CPU accumulated in float32 too before rounding the result; the one ``convert`` rounds the
float32 sum as the original result was rounded. The kernel may order the float32 additions
differently: the values agree within float32 rounding before the final rounding to bfloat16.

XLA:CPU has no other kernel for a batched ``bf16 × bf16 → f32`` dot: one that YNNPACK does not
claim (YNNPACK fusions switched off by an XLA option, as luxc does for a module that convolves)
fails when it runs. :mod:`luxc.runtime.compiling` reads XLA's optimised HLO after compiling and
compiles the module again without this pass when any such dot is left.

Left alone: float16 (YNNPACK has no fast f16 kernel), several contracting or free axes, a free
axis of size 1 (YNNPACK rejects vectors), dots whose sizes are all under 8, and dots without
batch axes (:mod:`~luxc.passes.dot_f32_accumulate` takes those).
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._marks import marked_convert
from luxc.passes._match import op_of
from luxc.passes._pin import row_major
from luxc.passes._rewrite import replace_each

NAME = "dot_bf16_batched"
DESCRIPTION = "batched bf16 dot_general with a bf16 result -> f32 result + one convert"


@dataclass(frozen=True)
class _Axes:
    """One operand's batch axes, its one free axis and its one contracting axis."""
    batch: list[int]
    free: int
    contract: int


@dataclass(frozen=True)
class _Plan:
    out: ir.RankedTensorType
    lhs: _Axes
    rhs: _Axes


def _single_free_axis(rank: int, batch: list[int], contract: list[int]) -> int | None:
    free = [d for d in range(rank) if d not in batch and d not in contract]
    return free[0] if len(free) == 1 and len(contract) == 1 else None


def _plan(op: ir.Operation) -> _Plan | None:
    dims = stablehlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    if not list(dims.lhs_batching_dimensions) or "algorithm" in op.attributes:
        return None
    out = ir.RankedTensorType(op.results[0].type)
    types = [ir.RankedTensorType(v.type) for v in op.operands]
    if not all(isinstance(t.element_type, ir.BF16Type) for t in (out, *types)):
        return None
    if not out.has_static_shape:
        return None
    lb, lc = list(dims.lhs_batching_dimensions), list(dims.lhs_contracting_dimensions)
    rb, rc = list(dims.rhs_batching_dimensions), list(dims.rhs_contracting_dimensions)
    lhs_free = _single_free_axis(types[0].rank, lb, lc)
    rhs_free = _single_free_axis(types[1].rank, rb, rc)
    if lhs_free is None or rhs_free is None:
        return None
    m, n, k = types[0].shape[lhs_free], types[1].shape[rhs_free], types[0].shape[lc[0]]
    if 1 in (m, n) or max(m, n, k) < 8:
        return None
    return _Plan(out, _Axes(lb, lhs_free, lc[0]), _Axes(rb, rhs_free, rc[0]))


def _is_transpose(value: ir.Value) -> bool:
    op = op_of(value)
    return op is not None and op.name == "stablehlo.transpose"


def _rows_first(value: ir.Value, axes: _Axes) -> tuple[ir.Value, list[int], int]:
    """The left operand with its free axis before its contracting axis, row-major; returns it
    with its batch axes and its contracting axis. One contracted over an axis before its free
    axis (the gradient dots ``pᵀ·g``) becomes a transposed copy; one that is a ``transpose``
    already is kept as an array of its own."""
    if axes.contract < axes.free:
        order = [*axes.batch, axes.free, axes.contract]
        batch = len(axes.batch)
        return row_major(stablehlo.TransposeOp(value, order).result), list(range(batch)), batch + 1
    if _is_transpose(value):
        return row_major(value), axes.batch, axes.contract
    return value, axes.batch, axes.contract


def _rewrite(op: ir.Operation, plan: _Plan) -> ir.Value:
    lhs, lhs_batch, lhs_contract = _rows_first(op.operands[0], plan.lhs)
    rhs = op.operands[1]
    if _is_transpose(rhs):
        rhs = row_major(rhs)
    dims = stablehlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=lhs_batch, rhs_batching_dimensions=plan.rhs.batch,
        lhs_contracting_dimensions=[lhs_contract], rhs_contracting_dimensions=[plan.rhs.contract])
    wide = ir.RankedTensorType.get(plan.out.shape, ir.F32Type.get())
    precision = op.attributes["precision_config"] if "precision_config" in op.attributes else None
    product = stablehlo.DotGeneralOp(wide, lhs, rhs, dims, precision_config=precision).result
    return marked_convert(plan.out, product)


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of dots given a float32 result."""
    return replace_each(module, "stablehlo.dot_general", _plan, _rewrite)
