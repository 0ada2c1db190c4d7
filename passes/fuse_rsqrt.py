"""fuse_rsqrt: ``a / sqrt(b)`` → ``a * rsqrt(b)`` and ``1 / sqrt(b)`` → ``rsqrt(b)``.

Where it comes from: normalisation layers (``(x - μ) / sqrt(σ² + ε)``), the gradient of
``sqrt`` (``0.5 / sqrt(x)``) and RMS-style optimisers.

Why it is exact: ``rsqrt(b)`` is ``1 / sqrt(b)`` by definition, and ``a · (1/sqrt(b)) =
a / sqrt(b)`` in real arithmetic for every ``b > 0``; for ``b = 0`` both give ``±inf`` (or NaN for
``a = 0``), for ``b < 0`` both give NaN. In floating point the hardware ``rsqrt`` may differ from
the correctly rounded quotient by an ulp or two, which the end-to-end test bounds.
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._match import producer, splat_value
from luxc.passes._rewrite import replace_each

NAME = "fuse_rsqrt"
DESCRIPTION = "a / sqrt(b) -> a * rsqrt(b); 1 / sqrt(b) -> rsqrt(b)"


def _sqrt_denominator(op: ir.Operation) -> ir.Operation | None:
    den = producer(op.operands[1])
    if den is None or den.name != "stablehlo.sqrt" or den.results[0].type != op.results[0].type:
        return None
    return den


def _multiply_by_rsqrt(op: ir.Operation, sqrt: ir.Operation) -> ir.Value:
    r = stablehlo.RsqrtOp(sqrt.operands[0]).result
    return r if splat_value(op.operands[0]) == 1.0 else stablehlo.MulOp(op.operands[0], r).result


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of divides rewritten."""
    return replace_each(module, "stablehlo.divide", _sqrt_denominator, _multiply_by_rsqrt)
