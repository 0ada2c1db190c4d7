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
  transposed explicitly into ``[batch..., m, k]``, and the transposed copy is kept as an array
  of its own by an ``optimization_barrier``: without it XLA folds the transpose into the dot's
  layout and the dot is no longer YNNPACK's.

Why it is exact in its own terms: the products and sums are those of the original op, which
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
from luxc.passes._rewrite import replace_each

NAME = "dot_bf16_batched"
DESCRIPTION = "batched bf16 dot_general with a bf16 result -> f32 result + one convert"


@dataclass(frozen=True)
class _Plan:
    out: ir.RankedTensorType
    lhs_batch: list[int]
    lhs_free: int
    lhs_contract: int


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
    return _Plan(out, lb, lhs_free, lc[0])


def _rows_first(op: ir.Operation, plan: _Plan) -> tuple[ir.Value, list[int], int]:
    """The left operand with its free axis before its contracting axis (a pinned transposed copy
    when it was the other way round), its batch axes and its contracting axis."""
    lhs = op.operands[0]
    if plan.lhs_contract > plan.lhs_free:
        return lhs, plan.lhs_batch, plan.lhs_contract
    permutation = [*plan.lhs_batch, plan.lhs_free, plan.lhs_contract]
    transposed = stablehlo.TransposeOp(lhs, permutation).result
    (kept,) = stablehlo.OptimizationBarrierOp([transposed]).results
    batch = len(plan.lhs_batch)
    return kept, list(range(batch)), batch + 1


def _rewrite(op: ir.Operation, plan: _Plan) -> ir.Value:
    lhs, batch, contract = _rows_first(op, plan)
    old = stablehlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    dims = stablehlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=batch,
        rhs_batching_dimensions=list(old.rhs_batching_dimensions),
        lhs_contracting_dimensions=[contract],
        rhs_contracting_dimensions=list(old.rhs_contracting_dimensions))
    wide = ir.RankedTensorType.get(plan.out.shape, ir.F32Type.get())
    precision = op.attributes["precision_config"] if "precision_config" in op.attributes else None
    product = stablehlo.DotGeneralOp(wide, lhs, op.operands[1], dims,
                                     precision_config=precision).result
    return marked_convert(plan.out, product)


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of dots given a float32 result."""
    return replace_each(module, "stablehlo.dot_general", _plan, _rewrite)
