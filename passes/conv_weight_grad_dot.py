"""conv_weight_grad_dot: the weight-gradient convolution of a one-channel layer → one shifted
slice of the input per kernel tap, stacked, and one ``dot_general``.

A convolution's gradient with respect to its kernel is a convolution whose "kernel" is the
output gradient ``g`` and whose output has the kernel's small spatial shape (``P`` taps):

    dw[p, i, o] = Σ_{b, s} x[b, s + p, i] · g[b, s, o]
                = (stack_p x[:, p:p + S, i]) @ g      (contracting b and s)

one matrix product with a ``B·S``-long contraction. On XLA:CPU this was measured faster than
its convolution only when the layer has a single input channel (LeNet's first layer on
grayscale images: 2.16 → 1.75 ms), and slower with 6 channels (0.49 → 0.75 ms), so only
``I ≤ MAX_CHANNELS = 1`` is rewritten (``benchmarks/README.md``).

Why it is exact: it is the defining sum of the convolution, one dot product per kernel tap;
only the order of the additions differs, as between any two convolution algorithms.

Matched: a unit-stride, undilated, ungrouped convolution (any padding) whose window
is larger than its output (what jax's transpose rule emits for the kernel gradient), with at
most ``MAX_TAPS`` output positions.
"""

from __future__ import annotations

import itertools

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from ._conv import Conv, dot, is_weight_gradient, simple_conv, transpose, window_slice, zero_pad
from ._rewrite import replace_each

NAME = "conv_weight_grad_dot"
DESCRIPTION = "one-channel weight-gradient convolution -> stacked shifted slices + one dot_general"

MAX_CHANNELS = 1
# The stacked operand is MAX_TAPS times the layer's input; larger kernels are left alone.
MAX_TAPS = 49


def _plan(op: ir.Operation) -> Conv | None:
    conv = simple_conv(op)
    if conv is None or not is_weight_gradient(conv) or conv.positions > MAX_TAPS:
        return None
    # In this form the convolution's "batch" axis holds the layer's input channels.
    if conv.lhs_shape[conv.dn.input_batch_dimension] > MAX_CHANNELS:
        return None
    return conv


def _rewrite(op: ir.Operation, conv: Conv) -> ir.Value:
    dn = conv.dn
    ls = list(dn.input_spatial_dimensions)
    x = zero_pad(op.operands[0], ls, conv.pads)
    window = [conv.rhs_shape[d] for d in dn.kernel_spatial_dimensions]
    out_spatial = [conv.out_shape[d] for d in dn.output_spatial_dimensions]
    element = ir.RankedTensorType(x.type).element_type
    rows = []
    for p in itertools.product(*(range(n) for n in out_spatial)):
        piece = window_slice(x, ls, p, window)
        shape = [1, *ir.RankedTensorType(piece.type).shape]
        rows.append(stablehlo.ReshapeOp(ir.RankedTensorType.get(shape, element), piece).result)
    stacked = rows[0] if len(rows) == 1 else stablehlo.ConcatenateOp(rows, 0).result
    # Contract the window and the "feature" axis; keep (positions, batch) then the out feature.
    y = dot(op, stacked, op.operands[1], [1 + d for d in ls] + [1 + dn.input_feature_dimension],
            [*dn.kernel_spatial_dimensions, dn.kernel_input_feature_dimension])
    batch = conv.lhs_shape[dn.input_batch_dimension]
    features = conv.rhs_shape[dn.kernel_output_feature_dimension]
    y = stablehlo.ReshapeOp(ir.RankedTensorType.get([*out_spatial, batch, features], element), y).result
    n = len(out_spatial)
    where = {dn.output_batch_dimension: n, dn.output_feature_dimension: n + 1}
    where.update({d: j for j, d in enumerate(dn.output_spatial_dimensions)})
    return transpose(y, [where[d] for d in range(len(conv.out_shape))])


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of convolutions replaced."""
    return replace_each(module, "stablehlo.convolution", _plan, _rewrite)
