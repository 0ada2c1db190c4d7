"""conv_depthwise_weight_grad: the kernel gradient of a depthwise convolution → one batched
product over the channels per kernel row, and the sums of its diagonals.

jax writes the gradient of a depthwise kernel as a convolution with ``batch_group_count = C``:

    dw[t, c] = Σ_{f, s} xp[c, f, t + s] · g[c, f, s]      (f: the batch, s: the image positions,
                                                           t: the kernel taps, xp: padded input)

XLA:CPU turns it into a dense convolution over every pair of channels and keeps the diagonal:
``C`` times the work (a 5×5 kernel over ``(64, 16, 16, 256)`` took 395 ms). Here the last
spatial axis is left free instead: for each position ``t'`` of the other kernel axes, one
product batched over the channels, contracting the batch and the other image axes,

    m[c, v, w] = Σ_{f, s'} xp[c, f, t' + s', v] · g[c, f, s', w]

and ``dw[t', t_n, c]`` is the sum of ``m[c, t_n + w, w]`` over ``w`` (a diagonal, read through
an identity mask). That is ``(S_n + P) · S_n / (T_n · S_n)`` times the minimal work (4× for a 5×5
kernel on 16×16 images), but as products XLA runs well: 2.7-6.3× faster than XLA's convolution
from 128 channels up, 1.6× at 64, and 0.8-0.9× at 32, hence ``MIN_CHANNELS``.

Why it is exact: the same sum of products, grouped differently (the order of the additions
differs, as between any two convolution algorithms). A bfloat16 or float16 gradient is computed
in float32 and rounded once.

Matched: unit strides, no dilation, no window reversal, one feature group, ``batch_group_count
= C ≥ MIN_CHANNELS`` equal to the input's batch axis and the kernel's and the output's features,
an output batch of 1, at least one spatial axis and at most ``MAX_TAPS`` output positions, a
padded last image axis at most ``MAX_WASTE`` times the kernel's last size (a long sequence or a
large image against a small kernel stays XLA's: the work grows with the axis squared) and a row
product of at most ``MAX_ROW_BYTES``; any padding, any dimension order.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._conv import float_result, in_float32, int_attr, pad_spatial, padding, unit_window
from luxc.passes._rewrite import replace_each

NAME = "conv_depthwise_weight_grad"
DESCRIPTION = "depthwise kernel-gradient convolution -> per-channel products and diagonal sums"

MIN_CHANNELS = 64
MAX_TAPS = 121
# The row product's extra work, (S + P) / T along the last axis: 4 for a 5x5 kernel on 16x16
# images (measured faster), 19 for 3x3 on 56x56 (measured 0.6x at 64 channels) — and its bytes.
MAX_WASTE = 8
MAX_ROW_BYTES = 64 * 2**20


def _plan(op: ir.Operation):
    if not (unit_window(op) and float_result(op)) or int_attr(op, "feature_group_count") != 1:
        return None
    groups = int_attr(op, "batch_group_count")
    dn = stablehlo.ConvDimensionNumbers(op.attributes["dimension_numbers"])
    x_shape, g_shape = (list(ir.RankedTensorType(v.type).shape) for v in op.operands)
    out_shape = list(ir.RankedTensorType(op.results[0].type).shape)
    if groups < MIN_CHANNELS or x_shape[dn.input_batch_dimension] != groups \
            or g_shape[dn.kernel_output_feature_dimension] != groups \
            or out_shape[dn.output_feature_dimension] != groups \
            or out_shape[dn.output_batch_dimension] != 1:
        return None
    spatial = list(dn.output_spatial_dimensions)
    if not spatial or math.prod(out_shape[d] for d in spatial) > MAX_TAPS:
        return None
    # the row product computes (S + P) · S entries a channel for T diagonals of S each
    last = dn.input_spatial_dimensions[-1]
    width = x_shape[last] + sum(padding(op)[-1])
    if width > MAX_WASTE * out_shape[spatial[-1]] or \
            groups * width * g_shape[dn.kernel_spatial_dimensions[-1]] * 4 > MAX_ROW_BYTES:
        return None
    return dn


def _shape(v: ir.Value) -> list[int]:
    return list(ir.RankedTensorType(v.type).shape)


def _reshape(v: ir.Value, shape: list[int]) -> ir.Value:
    element = ir.RankedTensorType(v.type).element_type
    return stablehlo.ReshapeOp(ir.RankedTensorType.get(shape, element), v).result


def _gradient(op: ir.Operation, x: ir.Value, g: ir.Value, out_type: ir.RankedTensorType, dn) -> ir.Value:
    element = out_type.element_type
    # channels first, then the batch, then the image axes: x (C, F, S...), g (C, F, R...)
    x = stablehlo.transpose(x, [dn.input_batch_dimension, dn.input_feature_dimension,
                                *dn.input_spatial_dimensions])
    x = pad_spatial(x, list(range(2, 2 + len(dn.input_spatial_dimensions))), padding(op), element)
    g = stablehlo.transpose(g, [dn.kernel_output_feature_dimension,
                                dn.kernel_input_feature_dimension, *dn.kernel_spatial_dimensions])
    channels, batch, *window = _shape(g)
    taps = [out_type.shape[d] for d in dn.output_spatial_dimensions]
    g = _reshape(g, [channels, batch * math.prod(window[:-1]), window[-1]])
    mask = _identity(window[-1], channels, element)
    columns = []
    for t in itertools.product(*(range(n) for n in taps[:-1])):
        m = _row_product(x, g, t, window, channels, batch)
        for t_last in range(taps[-1]):
            columns.append(_diagonal_sum(m, t_last, window[-1], channels, mask))
    flat = stablehlo.ConcatenateOp(columns, 0).result  # (positions, C), row-major over t
    grouped = _reshape(flat, [*taps, 1, channels])
    order = [*dn.output_spatial_dimensions, dn.output_batch_dimension, dn.output_feature_dimension]
    return stablehlo.transpose(grouped, [order.index(d) for d in range(len(order))])


def _row_product(x: ir.Value, g: ir.Value, t: tuple[int, ...], window: list[int],
                 channels: int, batch: int) -> ir.Value:
    """``m[c, v, w]``: ``x``'s window at kernel position ``t`` (all but the last axis) times
    ``g``, batched over the channels, contracting the batch and the leading image axes."""
    shape = _shape(x)
    begin = [0, 0, *t, 0]
    end = [channels, batch, *(t_d + w_d for t_d, w_d in zip(t, window[:-1])), shape[-1]]
    rows = stablehlo.SliceOp(x, begin, end, [1] * len(shape)).result
    rows = _reshape(rows, [channels, batch * math.prod(window[:-1]), shape[-1]])
    dims = stablehlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=[0], rhs_batching_dimensions=[0],
        lhs_contracting_dimensions=[1], rhs_contracting_dimensions=[1])
    element = ir.RankedTensorType(x.type).element_type
    result = ir.RankedTensorType.get([channels, shape[-1], window[-1]], element)
    return stablehlo.DotGeneralOp(result, rows, g, dims).result


def _identity(n: int, channels: int, element: ir.Type) -> ir.Value:
    eye = np.eye(n, dtype=np.float64 if isinstance(element, ir.F64Type) else np.float32)
    t = ir.RankedTensorType.get([n, n], element)
    eye = stablehlo.ConstantOp(ir.DenseElementsAttr.get(eye, type=t)).result
    return stablehlo.BroadcastInDimOp(ir.RankedTensorType.get([channels, n, n], element), eye,
                                      [1, 2]).result


def _diagonal_sum(m: ir.Value, offset: int, n: int, channels: int, mask: ir.Value) -> ir.Value:
    """``Σ_w m[c, offset + w, w]`` as a ``(1, C)`` row."""
    element = ir.RankedTensorType(m.type).element_type
    square = stablehlo.SliceOp(m, [0, offset, 0], [channels, offset + n, n], [1, 1, 1]).result
    masked = stablehlo.MulOp(square, mask).result
    scalar = ir.RankedTensorType.get([], element)
    zero = stablehlo.ConstantOp(ir.DenseElementsAttr.get_splat(
        scalar, ir.FloatAttr.get(element, 0.0))).result
    total = stablehlo.ReduceOp([ir.RankedTensorType.get([channels], element)], [masked], [zero],
                               ir.DenseI64ArrayAttr.get([1, 2]))
    block = total.regions[0].blocks.append(scalar, scalar)
    with ir.InsertionPoint(block):
        stablehlo.ReturnOp([stablehlo.AddOp(*block.arguments).result])
    return _reshape(total.results[0], [1, channels])


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of convolutions replaced."""
    return replace_each(module, "stablehlo.convolution", _plan, lambda op, dn: in_float32(
        op, lambda x, g, out_type: _gradient(op, x, g, out_type, dn)))
