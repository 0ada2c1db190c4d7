"""conv_weight_grad_dot: the weight-gradient convolution of a one-channel layer → one shifted
slice of the input per kernel tap, stacked, and one ``dot_general``.

A convolution's gradient with respect to its kernel is a convolution whose "kernel" is the
output gradient ``g`` and whose output has the kernel's small spatial shape (``P`` taps):

    dw[p, o] = Σ_{b, s} x[b, s + p] · g[b, s, o]           (one input channel)
             = (stack_p flatten(x[:, p:p + S])) @ flatten(g)

one (P, B·S) @ (B·S, O) matrix product. XLA:CPU runs LeNet's first-layer weight gradient
(1 → 6 channels) as a YNNPACK convolution that took about a quarter of the step; the product
is cheaper but writing the ``P`` stacked windows is not free, and the whole step was 0.86-1.21×
in six interleaved runs (``benchmarks/README.md``), so the pass is opt-in. With 6 input
channels the convolution was measured faster than slices + dot (0.49 against 0.75 ms), so only
``I ≤ MAX_CHANNELS = 1`` is matched.

Why it is exact: it is the defining sum of the convolution, one dot product per kernel tap;
only the order of the additions differs, as between any two convolution algorithms.

Matched: a unit-stride, undilated, ungrouped convolution (any padding) whose window
is larger than its output (what jax's transpose rule emits for the kernel gradient), with at
most ``MAX_TAPS`` output positions.
"""

from __future__ import annotations

import itertools
import math

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._conv import (
    Conv,
    dot,
    is_weight_gradient,
    precision_of,
    simple_conv,
    transpose,
    window_slice,
    zero_pad,
)
from luxc.passes._rewrite import replace_each

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
    ls, lf, lb = list(dn.input_spatial_dimensions), dn.input_feature_dimension, dn.input_batch_dimension
    # (channel = 1, feature, *spatial): each window is then one contiguous row of the stack.
    x = transpose(zero_pad(op.operands[0], ls, conv.pads), [lb, lf, *ls])
    window = [conv.rhs_shape[d] for d in dn.kernel_spatial_dimensions]
    out_spatial = [conv.out_shape[d] for d in dn.output_spatial_dimensions]
    element = ir.RankedTensorType(x.type).element_type
    row = conv.lhs_shape[lf] * math.prod(window)
    row_type = ir.RankedTensorType.get([1, row], element)
    rows = [stablehlo.ReshapeOp(row_type, window_slice(x, list(range(2, 2 + len(ls))), p, window)).result
            for p in itertools.product(*(range(n) for n in out_spatial))]
    stacked = rows[0] if len(rows) == 1 else stablehlo.ConcatenateOp(rows, 0).result
    # The output gradient as (feature, *window) rows by out-feature columns, in the same order.
    g = transpose(op.operands[1], [dn.kernel_input_feature_dimension, *dn.kernel_spatial_dimensions,
                                   dn.kernel_output_feature_dimension])
    features = conv.rhs_shape[dn.kernel_output_feature_dimension]
    g = stablehlo.ReshapeOp(ir.RankedTensorType.get([row, features], element), g).result
    y = dot(stacked, g, [1], [0], precision_of(op))
    y = stablehlo.ReshapeOp(ir.RankedTensorType.get([*out_spatial, 1, features], element), y).result
    n = len(out_spatial)
    where = {dn.output_batch_dimension: n, dn.output_feature_dimension: n + 1}
    where.update({d: j for j, d in enumerate(dn.output_spatial_dimensions)})
    return transpose(y, [where[d] for d in range(len(conv.out_shape))])


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of convolutions replaced."""
    return replace_each(module, "stablehlo.convolution", _plan, _rewrite)
