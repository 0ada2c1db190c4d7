"""dot_bf16_canonical: a matrix ``dot_general`` of bfloat16 operands with a float32 result → the
same product in the one form XLA:CPU hands to its bfloat16 matrix kernel: the left operand a
row-major ``[m, k]`` array contracted over its last axis, neither operand a ``transpose``.

Why: XLA:CPU (jaxlib 0.10.2) keeps a dot in bfloat16 only when YNNPACK claims it
(``xla/service/cpu/cpu_compiler.cc``: ``OperandUpcaster`` and ``FloatNormalization`` convert
the operands of every other bf16 dot to float32, before any simplification). YNNPACK's rule
(``xla/backends/cpu/ynn_support.cc``, ``IsDotSupportedByYnn``): operands and result
``(bf16, bf16, f32)``, row-major (descending) layouts, and a left operand in canonical form, not
"column major". A training step breaks it twice: jax writes ``x·Wᵀ`` as ``dot(x,
transpose(W))``, and XLA gives a transpose the permuted layout ``{0,1}`` (not descending); the
weight gradient ``gᵀ·x`` contracts the left operand over its first axis (the batch). Both fall
back to float32 (the MLP 784-512-512-10 step: all 8 dots ran in f32 behind ``convert``\\s).

The rewrite, for a rank-2 ``dot_general`` without batch axes, bf16 × bf16 → f32:

- an operand produced by ``stablehlo.transpose`` is replaced by the transpose's input, its
  contracting axis moved accordingly (``dot(x, transpose(W)) [1]x[0]`` →
  ``dot(x, W) [1]x[1]``; the right operand may be ``[k, n]`` or ``[n, k]``);
- a left operand then contracted over axis 0 is transposed explicitly into ``[m, k]``, and the
  transposed copy is pinned as an array of its own: ``reshape`` to ``[1, m, k]``,
  ``optimization_barrier``, ``reshape`` back. Without the barrier XLA folds the reshapes and the
  transpose back into the dot (the dot is upcast again); behind it the transpose is a bf16 copy
  with a row-major layout, which the dot takes as is.

Why it is exact: a transpose, a unit-axis reshape and an optimization barrier move or keep
values without changing any; the dot multiplies the same pairs of elements and sums them over
the same axis, accumulated in float32 as before (the kernel may order the float32 additions
differently: compiled = eager within float32 rounding, which the test checks against the bf16
bound).

Left alone: float16 (YNNPACK has no fast f16 kernel; XLA computes f16 dots in float32),
batched dots (XLA:CPU's batched-dot kernel has no bf16 × bf16 → f32 form), ranks above 2
(``dot_flatten`` brings the dense layers of a sequence model to rank 2 first), a dot with a
free axis of size 1 (YNNPACK rejects vectors), and dots already in form.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._match import producer
from luxc.passes._pin import row_major
from luxc.passes._rewrite import replace_each

NAME = "dot_bf16_canonical"
DESCRIPTION = "bf16 x bf16 -> f32 matrix dots: transposes folded, left operand made [m, k]"


@dataclass(frozen=True)
class _Plan:
    lhs: ir.Value
    rhs: ir.Value
    lhs_contract: int
    rhs_contract: int


def _untransposed(value: ir.Value, contract: int) -> tuple[ir.Value, int]:
    """``value`` with a producing rank-2 ``transpose`` looked through (and the contracting axis
    it moves)."""
    op = producer(value)
    if op is not None and op.name == "stablehlo.transpose":
        perm = list(ir.DenseI64ArrayAttr(op.attributes["permutation"]))
        if perm == [1, 0]:
            return op.operands[0], 1 - contract
    return value, contract


def _plan(op: ir.Operation) -> _Plan | None:
    dims = stablehlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    if list(dims.lhs_batching_dimensions) or "algorithm" in op.attributes:
        return None
    if not isinstance(ir.RankedTensorType(op.results[0].type).element_type, ir.F32Type):
        return None
    types = [ir.RankedTensorType(v.type) for v in op.operands]
    if any(t.rank != 2 or not isinstance(t.element_type, ir.BF16Type) for t in types):
        return None
    out = ir.RankedTensorType(op.results[0].type)
    if not out.has_static_shape or 1 in out.shape:
        return None
    (lc,), (rc,) = list(dims.lhs_contracting_dimensions), list(dims.rhs_contracting_dimensions)
    lhs, lc = _untransposed(op.operands[0], lc)
    rhs, rc = _untransposed(op.operands[1], rc)
    if lhs == op.operands[0] and rhs == op.operands[1] and lc == 1:
        return None  # already in form
    return _Plan(lhs, rhs, lc, rc)


def _pinned_rows(value: ir.Value) -> ir.Value:
    """``value`` (``[k, m]``) as a row-major ``[m, k]`` array that XLA cannot fold away."""
    return row_major(stablehlo.TransposeOp(value, [1, 0]).result)


def _rewrite(op: ir.Operation, plan: _Plan) -> ir.Value:
    lhs = plan.lhs if plan.lhs_contract == 1 else _pinned_rows(plan.lhs)
    dims = stablehlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=[], rhs_batching_dimensions=[],
        lhs_contracting_dimensions=[1], rhs_contracting_dimensions=[plan.rhs_contract])
    precision = op.attributes["precision_config"] if "precision_config" in op.attributes else None
    return stablehlo.DotGeneralOp(op.results[0].type, lhs, plan.rhs, dims,
                                  precision_config=precision).result


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of dots put in form."""
    return replace_each(module, "stablehlo.dot_general", _plan, _rewrite)
