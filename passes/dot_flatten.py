"""dot_flatten: a ``dot_general`` without batch axes whose operands have several free or several
contracted axes → the same product of two matrices, between reshapes.

A Dense layer applied to a ``(B, T, in)`` sequence traces to ``dot_general``s over three-axis
operands: the forward ``(B, T, in)·(out, in)``, the input gradient ``(B, T, out)·(out, in)`` and
the weight gradient ``(B, T, out)ᵀ(B, T, in)``, which contracts two axes. XLA:CPU canonicalises
the weight gradient by writing a transposed copy of one operand, which it fuses with whatever
produced it (in a pre-LN transformer block: the LayerNorm backward, read in transposed order),
before a YNNPACK matrix product. As a matrix product on ``(B·T, out)`` and ``(B·T, in)`` the same
gradient is a single ``dot`` whose left operand is contracted over its leading axis, which
XLA:CPU's own matrix-multiply kernel takes without a copy. On the transformer block of
``benchmarks/`` the step became faster (``benchmarks/README.md``).

Why it is exact: the reshapes collapse adjacent axes in row-major order, which moves no value;
contracted axes are collapsed in the same order on both sides, so the flattened product sums the
same products ``lhs[..., k] · rhs[k, ...]`` over the same index set, and the result, reshaped back,
holds each sum where the original ``dot_general`` put it. (XLA fixes no order of summation
within a dot either way, so the last bits may differ as between any two dot kernels.)

Under sharding: merging (batch, tokens) into one axis is free when only the batch is split
over devices, but when tokens (or features) are split the partitioner cannot keep the merged
axis split and gathers the activations. luxc's default pipeline therefore leaves this pass out
when an argument of rank ≥ 3 is split along an inner axis (``runtime/compiling/_options.py``); an explicit
pass list still runs it.

Matched: no batch axes, no ``algorithm`` attribute, static shapes, and on each operand the
contracted axes are its leading or its trailing axes, listed in increasing order, while some
operand has more than one free or more than one contracted axis.
"""

from __future__ import annotations

import math

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._rewrite import replace_each

NAME = "dot_flatten"
DESCRIPTION = ("dot_general over operands with several free or contracted axes -> one matrix "
               "product between reshapes (no transposed copies on XLA:CPU)")

# An operand's plan: its flattened shape and whether the contracted axis comes first.
_Operand = tuple[list[int], bool]


def _operand_plan(shape: list[int], contracting: list[int]) -> _Operand | None:
    rank, k = len(shape), len(contracting)
    if k == 0 or k == rank:
        return None  # an outer product or a full contraction: nothing to canonicalise
    if contracting == list(range(k)):
        leading = True
    elif contracting == list(range(rank - k, rank)):
        leading = False
    else:
        return None
    inner = math.prod(shape[d] for d in contracting)
    outer = math.prod(shape[d] for d in range(rank) if d not in contracting)
    return ([inner, outer] if leading else [outer, inner]), leading


def _plan(op: ir.Operation) -> tuple[_Operand, _Operand] | None:
    if "algorithm" in op.attributes:
        return None
    dims = stablehlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    if list(dims.lhs_batching_dimensions) or list(dims.rhs_batching_dimensions):
        return None
    types = [ir.RankedTensorType(v.type) for v in op.operands]
    if not all(t.has_static_shape for t in types) or not ir.RankedTensorType(op.result.type).has_static_shape:
        return None
    shapes = [list(t.shape) for t in types]
    lhs = _operand_plan(shapes[0], list(dims.lhs_contracting_dimensions))
    rhs = _operand_plan(shapes[1], list(dims.rhs_contracting_dimensions))
    if lhs is None or rhs is None or (len(shapes[0]) == 2 and len(shapes[1]) == 2):
        return None
    return lhs, rhs


def _rewrite(op: ir.Operation, plan: tuple[_Operand, _Operand]) -> ir.Value:
    (lhs_shape, lhs_leading), (rhs_shape, rhs_leading) = plan
    result_type = ir.RankedTensorType(op.result.type)
    lhs, rhs = (_reshape(v, ir.RankedTensorType.get(shape, ir.RankedTensorType(v.type).element_type))
                for v, shape in zip(op.operands, (lhs_shape, rhs_shape)))
    matrix = ir.RankedTensorType.get([lhs_shape[1 if lhs_leading else 0],
                                      rhs_shape[1 if rhs_leading else 0]], result_type.element_type)
    dims = stablehlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=[], rhs_batching_dimensions=[],
        lhs_contracting_dimensions=[0 if lhs_leading else 1],
        rhs_contracting_dimensions=[0 if rhs_leading else 1])
    precision = op.attributes["precision_config"] if "precision_config" in op.attributes else None
    product = stablehlo.DotGeneralOp(matrix, lhs, rhs, dims, precision_config=precision).result
    return _reshape(product, result_type)


def _reshape(value: ir.Value, to: ir.RankedTensorType) -> ir.Value:
    return value if value.type == to else stablehlo.ReshapeOp(to, value).result


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of dot_generals flattened."""
    return replace_each(module, "stablehlo.dot_general", _plan, _rewrite)
