"""dot_swap_operands: a weight-gradient ``dot_general`` (both operands contracted over their
leading axes, ``Σ_t a[t, i] · b[t, j]``) with the larger operand first → operands swapped and
the (small) result transposed.

XLA:CPU's matrix-multiply kernels take the left operand with its contracted axis last, so for
``aᵀ b`` it first writes a transposed copy of ``a``. In a Dense layer's weight gradient
``dW = gᵀ x`` (tokens contracted), ``g`` can be much larger than ``x`` (an MLP's up-projection:
``(B·T, 1024)`` against ``(B·T, 256)``); computing ``(xᵀ g)ᵀ`` transposes the smaller operand
and the ``(256, 1024)`` result instead. On the transformer block the transposed copies of
``(1024, 2048)`` and ``(768, 2048)`` became ``(256, 2048)`` ones (XLA's optimised HLO), but the
step was 0.90× and 1.00× in two interleaved runs, so the pass is opt-in
(``benchmarks/README.md``).

Why it is exact: ``(aᵀ b)[i, j] = Σ_t a[t, i] · b[t, j] = (bᵀ a)[j, i]``: the same products
summed over the same ``t``; a transpose moves values without arithmetic.

Matched: no batch axes, the contracted axes are the leading ones of both operands in the same
order, no ``algorithm`` attribute, and the left operand has more elements than the right.
"""

from __future__ import annotations

import math

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._conv import dot, transpose
from luxc.passes._rewrite import replace_each

NAME = "dot_swap_operands"
DESCRIPTION = "weight-gradient dot_general a^T b with a larger -> (b^T a)^T (XLA:CPU transposes a copy of a)"


def _plan(op: ir.Operation) -> int | None:
    if "algorithm" in op.attributes:
        return None
    dims = stablehlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    if list(dims.lhs_batching_dimensions) or list(dims.rhs_batching_dimensions):
        return None
    k = len(dims.lhs_contracting_dimensions)
    leading = list(range(k))
    if list(dims.lhs_contracting_dimensions) != leading or list(dims.rhs_contracting_dimensions) != leading:
        return None
    lhs, rhs = (list(ir.RankedTensorType(v.type).shape) for v in op.operands)
    return k if math.prod(lhs) > math.prod(rhs) else None


def _rewrite(op: ir.Operation, k: int) -> ir.Value:
    lhs, rhs = op.operands
    n_lhs = len(ir.RankedTensorType(lhs.type).shape) - k
    n_rhs = len(ir.RankedTensorType(rhs.type).shape) - k
    precision = None
    if "precision_config" in op.attributes:
        precision = ir.ArrayAttr.get(list(ir.ArrayAttr(op.attributes["precision_config"]))[::-1])
    y = dot(rhs, lhs, list(range(k)), list(range(k)), precision)
    # y holds (rhs free axes, lhs free axes); the op's result is (lhs free, rhs free).
    return transpose(y, [*range(n_rhs, n_rhs + n_lhs), *range(n_rhs)])


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of dot_generals swapped."""
    return replace_each(module, "stablehlo.dot_general", _plan, _rewrite)
