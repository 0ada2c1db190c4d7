"""conv_few_channels: a convolution over one input channel (a first layer on grayscale images)
→ a sum of shifted, broadcast multiply-adds.

With ``I`` input channels and ``K`` kernel taps, the convolution is

    out[b, s, o] = Σ_{k, i} xp[b, s + k, i] · w[k, i, o]          (xp: the padded input)

— ``K·I`` terms, each an element-wise product of a shifted slice of the input (broadcast over
``o``) and one kernel tap (broadcast over ``b, s``). XLA fuses the whole sum into one loop over
the output; for ``I = 1`` on XLA:CPU that loop was measured 3.8× faster than XLA's own
convolution, which is built for many channels; whole training steps with such a first layer
were 0.89×–0.97× (LeNet-5: 0.91×). With 2 or 3 input channels it was measured both faster and
slower (3→16 channels: 1.24×), so only ``I ≤ MAX_CHANNELS = 1`` is rewritten.

Why it is exact: it is the defining sum of the convolution; only the order of the additions
differs, as between any two convolution algorithms. A bfloat16 or float16 convolution is summed
in float32 (its operands converted once, the sum rounded once to the narrow type), as XLA's
convolution accumulates it: rounding each of the ``K·I`` partial sums to bf16 instead cost the
bf16 LeNet-5 step 13.5 of its 22 ms (a bf16 round trip per term in the fused loop).

Matched: unit strides, no dilation, one feature and batch group (any padding).
"""

from __future__ import annotations

import itertools

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._conv import float_result, in_float32, kernel_tap, pad_spatial, simple_conv
from luxc.passes._rewrite import replace_each

NAME = "conv_few_channels"
DESCRIPTION = "convolution over 1 input channel -> sum of shifted multiply-adds (one fused loop)"

MAX_CHANNELS = 1
MAX_TERMS = 128


def _plan(op: ir.Operation):
    conv = simple_conv(op)
    if conv is None or not float_result(op):
        return None
    channels = conv.rhs_shape[conv.dn.kernel_input_feature_dimension]
    if channels > MAX_CHANNELS or conv.taps * channels > MAX_TERMS:
        return None
    return conv.dn, conv.pads


def _rewrite(op: ir.Operation, dn, pads) -> ir.Value:
    return in_float32(op, lambda x, w, out_type: _sum(x, w, out_type, dn, pads))


def _sum(x: ir.Value, w: ir.Value, out_type: ir.RankedTensorType, dn, pads) -> ir.Value:
    element = out_type.element_type
    lhs_rank = len(ir.RankedTensorType(x.type).shape)
    ls, lf, lb = list(dn.input_spatial_dimensions), dn.input_feature_dimension, dn.input_batch_dimension
    rs, ri, ro = list(dn.kernel_spatial_dimensions), dn.kernel_input_feature_dimension, \
        dn.kernel_output_feature_dimension
    w_shape = list(ir.RankedTensorType(w.type).shape)
    spatial = [out_type.shape[d] for d in dn.output_spatial_dimensions]
    x = pad_spatial(x, ls, pads, element)
    padded = list(ir.RankedTensorType(x.type).shape)
    # Where each input dimension lands in the output: batch -> ob, spatial d -> os[d].
    x_to_out = {lb: dn.output_batch_dimension}
    x_to_out.update({d: dn.output_spatial_dimensions[i] for i, d in enumerate(ls)})
    x_dims = [j for j in range(lhs_rank) if j != lf]
    total = None
    for k in itertools.product(*(range(w_shape[d]) for d in rs)):
        for i in range(w_shape[ri]):
            begin, end = [0] * lhs_rank, list(padded)
            for d, k_d, s_d in zip(ls, k, spatial):
                begin[d], end[d] = k_d, k_d + s_d
            begin[lf], end[lf] = i, i + 1
            xs = stablehlo.SliceOp(x, begin, end, [1] * lhs_rank).result
            xs = stablehlo.ReshapeOp(ir.RankedTensorType.get(
                [end[j] - begin[j] for j in x_dims], element), xs).result
            xs = stablehlo.BroadcastInDimOp(out_type, xs, [x_to_out[j] for j in x_dims]).result
            tap = kernel_tap(w, rs, k, {ri: i}, ro, out_type, dn.output_feature_dimension)
            term = stablehlo.MulOp(xs, tap).result
            total = term if total is None else stablehlo.AddOp(total, term).result
    return total


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of convolutions replaced."""
    return replace_each(module, "stablehlo.convolution", _plan,
                        lambda op, plan: _rewrite(op, *plan))
