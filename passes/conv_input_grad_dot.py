"""conv_input_grad_dot: the input-gradient convolution of a training step → one
``dot_general`` over channels, then its taps added at their shifted places.

A convolution's gradient with respect to its input is itself a convolution: the output gradient
``g`` (``C`` channels), zero-padded by ``(lo, hi)``, against the spatially reversed kernel ``r``
(``K`` taps, ``O`` output channels). Grouped the other way round ("col2im"),

    z[k, o, b, t]  = Σ_c r[k, c, o] · g[b, t, c]          one (K·O, C) @ (C, B·T) product
    dx[b, s, o]    = Σ_k z[k, o, b, s + k - lo]            K shifted additions

the work is one matrix product, which XLA:CPU runs with its GEMM kernel, and cheap additions
(a bf16/f16 gradient is accumulated in float32 and rounded once). The additions go a kernel
row at a time: the row's taps (one per position along the last spatial axis) zero-padded to
the row's length and summed in one loop, then the row added in place to its slice of the
output; with the taps first and ``o`` next in ``z``, each tap is a contiguous block whose rows
run along that last axis. Alone, LeNet's conv2 input gradient (16 → 6 channels, 5×5) took
0.36-0.46× the time of XLA:CPU's convolution with one in-place addition per tap and ``z``
laid out ``(b, t, k, o)``; a row at a time took it from 1.29 to 0.73 ms, and the LeNet-5 step
from 4.9 to 4.3 ms (f32) and 6.1 to 5.1 ms (bf16), each the median of six processes a side,
alternating. Materialising the concatenated shifted slices instead (im2col) was 7× slower; the
25 padded taps summed in one loop (1.08 ms) and the rows summed by a second padded loop (0.95)
were slower than the in-place rows. Forward convolutions are left to XLA, weight gradients
have their own pass (``conv_weight_grad_dot``).

Why it is exact: every output element is the defining sum of the convolution,
``Σ_{k, c} gp[b, s + k, c] · r[k, c, o]``, with its terms grouped per tap; only the order of the
additions differs, as between any two convolution algorithms. Taps that fall in the zero padding
contribute nothing and are left out.

Matched: a unit-stride, undilated, ungrouped convolution (any padding) whose kernel
is a ``stablehlo.reverse`` over its spatial axes of a forward convolution's kernel (what jax's
transpose rule emits for the input gradient; ``_conv.is_input_gradient`` tells it from the
forward of a true convolution, ``nn.Conv``'s default, whose kernel is reversed too), with 2 to
``MAX_TAPS`` taps, at most ``MAX_FEATURES`` output channels and a product ``z`` of at most
``MAX_PRODUCT_BYTES`` (in float32). Only there was it measured faster: the input gradient and
its forward convolution alone (batch 128, "SAME", under the XLA options luxc gives a
convolutional step; Intel Xeon, 2026-12-07), the pass over XLA's time was 0.54-0.92 with 3-6
channels and ``z`` up to 19 MiB (3 channels at 14×14, 5×5: 0.54; 4 at 32×32, 3×3: 0.65; 6 at
12×12, 5×5: 0.84-1.19 over three runs), but 2.0 for 6 channels at 24×24 (``z`` 44 MiB),
1.07-1.15 for 8 channels, 1.6-6.0 from 16 channels up (``z`` 19-105 MiB: it is written and read
once a tap);
Lux's ResNet-20 step (16-64 channels, 3×3) took 549 ms with it and 392 without, and a 1×1
kernel's gradient, one matrix product already, ran at a third of the speed taps- and
channel-first (ConvMixer-256/2, batch 64: 378 → 288 ms without).
"""

from __future__ import annotations

import itertools
import math

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._conv import (
    Conv,
    dot,
    is_input_gradient,
    precision_of,
    scalar,
    simple_conv,
    transpose,
    window_slice,
    zero_pad,
)
from luxc.passes._marks import marked_convert
from luxc.passes._rewrite import replace_each

NAME = "conv_input_grad_dot"
DESCRIPTION = "input-gradient convolution -> one dot_general + shifted in-place additions"

# z is MAX_TAPS times the input gradient; larger kernels are left alone.
MAX_TAPS = 49
# Where the pass is faster than XLA:CPU's convolution (module docstring, "Matched"): a narrow
# input gradient (LeNet's 6 channels) and a product z that stays small.
MAX_FEATURES = 6
MAX_PRODUCT_BYTES = 24 * 2**20


def _plan(op: ir.Operation) -> Conv | None:
    conv = simple_conv(op)
    if conv is None or not 1 < conv.taps <= MAX_TAPS or not is_input_gradient(op, conv):
        return None
    features = conv.out_shape[conv.dn.output_feature_dimension]
    rest = math.prod(conv.lhs_shape) // conv.lhs_shape[conv.dn.input_feature_dimension]
    if features > MAX_FEATURES or conv.taps * features * rest * 4 > MAX_PRODUCT_BYTES:
        return None
    return conv


def _rewrite(op: ir.Operation, conv: Conv) -> ir.Value:
    dn = conv.dn
    x, r = op.operands
    lf = dn.input_feature_dimension
    free = [d for d in range(len(conv.lhs_shape)) if d != lf]
    ks = [conv.rhs_shape[d] for d in dn.kernel_spatial_dimensions]
    # z[k, o, ...] = Σ_c r[c, k, o] · x[..., c]: the taps, then o, then the free axes of x, so
    # that one tap's plane is a contiguous block and its rows run along x's last spatial axis.
    r = transpose(r, [dn.kernel_input_feature_dimension, *dn.kernel_spatial_dimensions,
                      dn.kernel_output_feature_dimension])
    narrow = ir.RankedTensorType(op.results[0].type)
    wide = isinstance(narrow.element_type, ir.BF16Type | ir.F16Type)
    # A bf16/f16 gradient: the product accumulates in float32 and the taps are added in float32,
    # rounded once at the end (as the convolution it replaces accumulates); adding them in the
    # narrow type would round after every tap, a convert pair per tap in XLA:CPU's loops.
    z = dot(r, x, [0], [lf], precision_of(op), ir.F32Type.get() if wide else None)
    total = _added_taps(z, conv, ks, [1 + len(ks) + free.index(d) for d in dn.input_spatial_dimensions])
    # total's axes: the output feature, then the input's axes without its feature axis.
    where = {dn.output_batch_dimension: 1 + free.index(dn.input_batch_dimension),
             dn.output_feature_dimension: 0}
    for o, i in zip(dn.output_spatial_dimensions, dn.input_spatial_dimensions):
        where[o] = 1 + free.index(i)
    total = transpose(total, [where[d] for d in range(len(conv.out_shape))])
    return marked_convert(narrow, total) if wide else total


def _added_taps(z: ir.Value, conv: Conv, ks: list[int], spatial: list[int]) -> ir.Value:
    """``Σ_k`` tap ``k`` of ``z`` at its shifted place: the taps of one kernel row (all axes but
    the last fixed) are zero-padded to the row's full length and added in one loop, then the row
    is added in place to its slice of the total: 5 in-place updates for a 5×5 kernel, not 25."""
    z_shape = list(ir.RankedTensorType(z.type).shape)
    element = ir.RankedTensorType(z.type).element_type
    nk = len(ks)
    plane = z_shape[nk:]                       # (o, free axes...)
    in_spatial = [z_shape[j] for j in spatial]
    out_spatial = [conv.out_shape[d] for d in conv.dn.output_spatial_dimensions]
    at = [j - nk for j in spatial]             # the spatial axes within a plane
    out_shape = list(plane)
    for j, n in zip(at, out_spatial):
        out_shape[j] = n
    total = stablehlo.BroadcastInDimOp(ir.RankedTensorType.get(out_shape, element),
                                       scalar(element, 0.0), []).result
    index = ir.IntegerType.get_signless(64)
    for outer in itertools.product(*(range(n) for n in ks[:-1])):
        row, offset = None, None
        for last in range(ks[-1]):
            k = (*outer, last)
            # Tap k adds z[k, t] at output position t + lo - k, for the t that land inside.
            first = [max(0, k_j - lo) for k_j, (lo, _) in zip(k, conv.pads)]
            end = [min(t_j, s_j + k_j - lo) for t_j, s_j, k_j, (lo, _) in
                   zip(in_spatial, out_spatial, k, conv.pads)]
            if any(b >= e for b, e in zip(first, end)):
                continue
            sizes = [e - b for b, e in zip(first, end)]
            piece = window_slice(z, list(range(nk)) + spatial, (*k, *first), [1] * nk + sizes)
            shape = list(plane)
            for j, n in zip(at, sizes):
                shape[j] = n
            piece = stablehlo.ReshapeOp(ir.RankedTensorType.get(shape, element), piece).result
            offset = [b + lo - k_j for b, k_j, (lo, _) in zip(first, k, conv.pads)]
            # Along the last spatial axis the piece is padded to the row's whole length.
            piece = zero_pad(piece, at[-1:], [(offset[-1], out_spatial[-1] - offset[-1] - sizes[-1])])
            row = piece if row is None else stablehlo.AddOp(row, piece).result
        if row is None:
            continue
        row_shape = list(ir.RankedTensorType(row.type).shape)
        starts = [0] * len(out_shape)
        for j, b in zip(at[:-1], offset[:-1]):
            starts[j] = b
        # Accumulated in place: XLA updates the slice of ``total`` without copying it.
        region = window_slice(total, list(range(len(out_shape))), tuple(starts), row_shape)
        region = stablehlo.AddOp(region, row).result
        total = stablehlo.DynamicUpdateSliceOp(total, region, [scalar(index, i) for i in starts]).result
    return total


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of convolutions replaced."""
    return replace_each(module, "stablehlo.convolution", _plan, _rewrite)
