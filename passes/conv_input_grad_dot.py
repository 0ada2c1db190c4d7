"""conv_input_grad_dot: the input-gradient convolution of a training step → one
``dot_general`` over channels, then its taps added at their shifted places.

A convolution's gradient with respect to its input is itself a convolution: the output gradient
``g`` (``C`` channels), zero-padded by ``(lo, hi)``, against the spatially reversed kernel ``r``
(``K`` taps, ``O`` output channels). Grouped the other way round ("col2im"),

    z[b, t, k, o]  = Σ_c g[b, t, c] · r[k, c, o]          one (B·T, C) @ (C, K·O) product
    dx[b, s, o]    = Σ_k z[b, s + k - lo, k, o]            K shifted, in-place additions

the work is one matrix product, which XLA:CPU runs with its GEMM kernel, and ``K`` cheap
updates of slices of the output (a bf16/f16 gradient is accumulated in float32 and rounded
once). Alone, LeNet's conv2 input gradient (16 → 6 channels, 5×5)
took 0.36-0.46× the time of XLA:CPU's convolution; the whole LeNet step 0.71-1.03× (median
0.89×, six interleaved runs; ``benchmarks/README.md``). Materialising the concatenated
shifted slices instead (im2col) was 7× slower. The other two forms were measured differently:
forward convolutions are left to XLA, weight gradients have their own pass
(``conv_weight_grad_dot``).

Why it is exact: every output element is the defining sum of the convolution,
``Σ_{k, c} gp[b, s + k, c] · r[k, c, o]``, with its terms grouped per tap; only the order of the
additions differs, as between any two convolution algorithms. Taps that fall in the zero padding
contribute nothing and are left out.

Matched: a unit-stride, undilated, ungrouped convolution (any padding) whose kernel
is a ``stablehlo.reverse`` over its spatial axes of a forward convolution's kernel (what jax's
transpose rule emits for the input gradient; ``_conv.is_input_gradient`` tells it from the
forward of a true convolution, ``nn.Conv``'s default, whose kernel is reversed too), with at most
``MAX_TAPS`` taps.
"""

from __future__ import annotations

import itertools

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
)
from luxc.passes._marks import marked_convert
from luxc.passes._rewrite import replace_each

NAME = "conv_input_grad_dot"
DESCRIPTION = "input-gradient convolution -> one dot_general + shifted in-place additions"

# z is MAX_TAPS times the input gradient; larger kernels are left alone.
MAX_TAPS = 49


def _plan(op: ir.Operation) -> Conv | None:
    conv = simple_conv(op)
    if conv is None or conv.taps > MAX_TAPS or not is_input_gradient(op, conv):
        return None
    return conv


def _rewrite(op: ir.Operation, conv: Conv) -> ir.Value:
    dn = conv.dn
    x, r = op.operands
    lf = dn.input_feature_dimension
    free = [d for d in range(len(conv.lhs_shape)) if d != lf]
    ks = [conv.rhs_shape[d] for d in dn.kernel_spatial_dimensions]
    # z[..., k, o] = Σ_c x[..., c] · r[k, c, o]: the free axes of x, then the taps, then o.
    r = transpose(r, [dn.kernel_input_feature_dimension, *dn.kernel_spatial_dimensions,
                      dn.kernel_output_feature_dimension])
    narrow = ir.RankedTensorType(op.results[0].type)
    wide = isinstance(narrow.element_type, ir.BF16Type | ir.F16Type)
    # A bf16/f16 gradient: the product accumulates in float32 and the taps are added in float32,
    # rounded once at the end (as the convolution it replaces accumulates); adding them in the
    # narrow type would round after every tap, a convert pair per tap in XLA:CPU's loops.
    z = dot(x, r, [lf], [0], precision_of(op), ir.F32Type.get() if wide else None)
    spatial = [free.index(d) for d in dn.input_spatial_dimensions]
    out_spatial = [conv.out_shape[d] for d in dn.output_spatial_dimensions]
    z_shape = list(ir.RankedTensorType(z.type).shape)
    element = ir.RankedTensorType(z.type).element_type
    tap_dims = list(range(len(free), len(free) + len(ks)))
    tap_type = ir.RankedTensorType.get([z_shape[j] for j in range(len(free))] + z_shape[-1:], element)
    out_shape = list(tap_type.shape)
    for j, n in zip(spatial, out_spatial):
        out_shape[j] = n
    total = stablehlo.BroadcastInDimOp(ir.RankedTensorType.get(out_shape, element),
                                       scalar(element, 0.0), []).result
    index = ir.IntegerType.get_signless(64)
    in_spatial = [z_shape[j] for j in spatial]
    for k in itertools.product(*(range(n) for n in ks)):
        # Tap k adds z[t, k] at output position t + lo - k, for the t that land inside.
        first = [max(0, k_j - lo) for k_j, (lo, _) in zip(k, conv.pads)]
        last = [min(t_j, s_j + k_j - lo) for t_j, s_j, k_j, (lo, _) in
                zip(in_spatial, out_spatial, k, conv.pads)]
        if any(b >= e for b, e in zip(first, last)):
            continue
        sizes = [e - b for b, e in zip(first, last)]
        piece = window_slice(z, spatial + tap_dims, (*first, *k), sizes + [1] * len(ks))
        shape = list(tap_type.shape)
        for j, n in zip(spatial, sizes):
            shape[j] = n
        piece = stablehlo.ReshapeOp(ir.RankedTensorType.get(shape, element), piece).result
        offset = [0] * len(out_shape)
        for j, b, k_j, (lo, _) in zip(spatial, first, k, conv.pads):
            offset[j] = b + lo - k_j
        # Accumulated in place: XLA updates the slice of ``total`` without copying it.
        region = window_slice(total, list(range(len(out_shape))), tuple(offset), shape)
        region = stablehlo.AddOp(region, piece).result
        total = stablehlo.DynamicUpdateSliceOp(total, region, [scalar(index, i) for i in offset]).result
    # total's axes: the input's axes without its feature axis, then the output feature.
    where = {dn.output_batch_dimension: free.index(dn.input_batch_dimension),
             dn.output_feature_dimension: len(free)}
    for o, i in zip(dn.output_spatial_dimensions, dn.input_spatial_dimensions):
        where[o] = free.index(i)
    total = transpose(total, [where[d] for d in range(len(conv.out_shape))])
    return marked_convert(narrow, total) if wide else total


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of convolutions replaced."""
    return replace_each(module, "stablehlo.convolution", _plan, _rewrite)
