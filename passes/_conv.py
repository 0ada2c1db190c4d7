"""Reading a ``stablehlo.convolution`` — its attributes, and which of the three forms of a
training step it is (forward, input-gradient, weight-gradient) — and the pieces the convolution
passes rebuild one from: the padded input, a kernel tap, float32 accumulation."""

from __future__ import annotations

import math
from typing import NamedTuple

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._marks import marked_convert
from luxc.passes._match import producer, source


class Conv(NamedTuple):
    """A unit-stride, undilated, ungrouped convolution; ``pads`` may be negative (a crop)."""

    dn: stablehlo.ConvDimensionNumbers
    pads: list[tuple[int, int]]
    lhs_shape: list[int]
    rhs_shape: list[int]
    out_shape: list[int]

    @property
    def taps(self) -> int:
        """Kernel window positions (the product of the kernel's spatial sizes)."""
        return math.prod(self.rhs_shape[d] for d in self.dn.kernel_spatial_dimensions)

    @property
    def positions(self) -> int:
        """Output window positions (the product of the output's spatial sizes)."""
        return math.prod(self.out_shape[d] for d in self.dn.output_spatial_dimensions)


def _all_ones(op: ir.Operation, name: str) -> bool:
    return name not in op.attributes or all(v == 1 for v in ir.DenseI64ArrayAttr(op.attributes[name]))


def int_attr(op: ir.Operation, name: str) -> int:
    """Integer attribute ``name`` of ``op`` (a group count), 1 when absent."""
    return ir.IntegerAttr(op.attributes[name]).value if name in op.attributes else 1


def _padding(op: ir.Operation, n: int) -> list[tuple[int, int]]:
    if "padding" not in op.attributes:
        return [(0, 0)] * n
    flat = [int(v) for v in ir.DenseIntElementsAttr(op.attributes["padding"])]
    return list(zip(flat[0::2], flat[1::2]))


def float_result(op: ir.Operation) -> bool:
    """Whether ``op``'s result holds floats (f16, bf16, f32, f64): the rewrites write float
    zeros and float32 sums; an integer convolution stays XLA's."""
    element = ir.RankedTensorType(op.results[0].type).element_type
    return isinstance(element, ir.F16Type | ir.BF16Type | ir.F32Type | ir.F64Type)


def unit_window(op: ir.Operation) -> bool:
    """Whether convolution ``op`` has unit strides, no dilation and no window reversal."""
    if not (_all_ones(op, "window_strides") and _all_ones(op, "lhs_dilation")
            and _all_ones(op, "rhs_dilation")):
        return False
    return not ("window_reversal" in op.attributes
                and any(ir.DenseBoolArrayAttr(op.attributes["window_reversal"])))


def padding(op: ir.Operation) -> list[tuple[int, int]]:
    """Convolution ``op``'s ``(low, high)`` padding of each spatial axis, in the order of its
    input's spatial dimensions."""
    dn = stablehlo.ConvDimensionNumbers(op.attributes["dimension_numbers"])
    return _padding(op, len(dn.input_spatial_dimensions))


def pad_spatial(x: ir.Value, dims: list[int], pads: list[tuple[int, int]],
                element: ir.Type) -> ir.Value:
    """``x`` padded with zeros by ``pads[i]`` along axis ``dims[i]`` (negative: cropped)."""
    if not any(lo or hi for lo, hi in pads):
        return x
    rank = len(ir.RankedTensorType(x.type).shape)
    low, high = [0] * rank, [0] * rank
    for d, (lo, hi) in zip(dims, pads):
        low[d], high[d] = lo, hi
    zero = stablehlo.ConstantOp(ir.DenseElementsAttr.get_splat(
        ir.RankedTensorType.get([], element), ir.FloatAttr.get(element, 0.0))).result
    return stablehlo.PadOp(x, zero, low, high, [0] * rank).result


def _f32(t: ir.RankedTensorType) -> ir.RankedTensorType:
    return ir.RankedTensorType.get(t.shape, ir.F32Type.get())


def in_float32(op: ir.Operation, build) -> ir.Value:
    """``build(x, w, result_type)`` on convolution ``op``'s two operands. A bf16/f16
    convolution is built in float32 from its converted operands and rounded once (a marked
    ``convert``), as XLA's convolution accumulates it."""
    out_type = ir.RankedTensorType(op.results[0].type)
    narrow = isinstance(out_type.element_type, ir.BF16Type | ir.F16Type)
    wide = _f32(out_type) if narrow else out_type
    # operands of another type (bf16 operands with preferred_element_type=float32) are
    # converted to the type the sum is built in: exact, as every narrow float is a wide one
    x, w = (v if ir.RankedTensorType(v.type).element_type == wide.element_type else
            stablehlo.convert(ir.RankedTensorType.get(ir.RankedTensorType(v.type).shape,
                                                      wide.element_type), v)
            for v in op.operands)
    return marked_convert(out_type, build(x, w, wide)) if narrow else build(x, w, out_type)


def kernel_tap(w: ir.Value, spatial: list[int], k: tuple[int, ...], pinned: dict[int, int],
               keep: int, out_type: ir.RankedTensorType, out_feature: int) -> ir.Value:
    """Kernel ``w`` at spatial position ``k`` (its axes ``spatial``) and at index ``pinned[d]``
    of each axis ``d`` of ``pinned``: the vector along its axis ``keep``, broadcast over
    ``out_type`` along ``out_feature``."""
    shape = list(ir.RankedTensorType(w.type).shape)
    begin, end = [0] * len(shape), list(shape)
    for d, index in [*zip(spatial, k), *pinned.items()]:
        begin[d], end[d] = index, index + 1
    tap = stablehlo.SliceOp(w, begin, end, [1] * len(shape)).result
    tap = stablehlo.ReshapeOp(ir.RankedTensorType.get([shape[keep]], out_type.element_type),
                              tap).result
    return stablehlo.BroadcastInDimOp(out_type, tap, [out_feature]).result


def simple_conv(op: ir.Operation) -> Conv | None:
    """``op`` read as a :class:`Conv`, or ``None`` if it has strides, dilations, groups or
    window reversal."""
    if not unit_window(op):
        return None
    if int_attr(op, "feature_group_count") != 1 or int_attr(op, "batch_group_count") != 1:
        return None
    dn = stablehlo.ConvDimensionNumbers(op.attributes["dimension_numbers"])
    pads = padding(op)
    shapes = [list(ir.RankedTensorType(v.type).shape) for v in (*op.operands, op.results[0])]
    return Conv(dn, pads, *shapes)


def _spatial_reverse(value: ir.Value, conv: Conv) -> ir.Operation | None:
    """The ``stablehlo.reverse`` over ``conv``'s kernel spatial axes defining ``value``."""
    rev = producer(value)
    if rev is None or rev.name != "stablehlo.reverse":
        return None
    reversed_dims = set(ir.DenseI64ArrayAttr(rev.attributes["dimensions"]))
    return rev if reversed_dims == set(conv.dn.kernel_spatial_dimensions) else None


def is_input_gradient(op: ir.Operation, conv: Conv) -> bool:
    """The gradient of a convolution with respect to its input: a convolution whose kernel is
    the forward convolution's kernel reversed along its spatial axes — what jax's transpose
    rule emits.

    The forward's kernel ``k`` is the weight ``w`` itself (a cross-correlation), or
    ``reverse(w)`` (a true convolution, ``nn.Conv``'s default and Lux's). A true convolution's
    forward, ``conv(x, reverse(w))``, has a reversed kernel too: it is told apart because its
    ``w`` is no convolution's kernel and no reverse. (The test looks at the kernel's producer,
    not at the forward convolution itself, which another pass may already have rewritten.)"""
    rev = _spatial_reverse(op.operands[1], conv)
    if rev is None:
        return False
    k = source(rev.operands[0])
    if _spatial_reverse(k, conv) is not None:
        return True
    return any(use.owner.name == "stablehlo.convolution" and use.operand_number == 1
               for use in k.uses)


def is_weight_gradient(conv: Conv) -> bool:
    """The gradient of a convolution with respect to its kernel: the output gradient is the
    "kernel", so the window is larger than the output (jax's transpose rule also swaps the
    batch and feature roles of the input, ``[f, 0, 1, b]``)."""
    return conv.taps > conv.positions


def zero_pad(x: ir.Value, spatial_dims: list[int], pads: list[tuple[int, int]]) -> ir.Value:
    """``x`` padded with zeros by ``pads`` along ``spatial_dims`` (a negative pad crops; ``x``
    itself if no padding)."""
    if not any(lo or hi for lo, hi in pads):
        return x
    x_type = ir.RankedTensorType(x.type)
    rank = len(x_type.shape)
    low, high = [0] * rank, [0] * rank
    for d, (lo, hi) in zip(spatial_dims, pads):
        low[d], high[d] = lo, hi
    return stablehlo.PadOp(x, scalar(x_type.element_type, 0), low, high, [0] * rank).result


def scalar(element: ir.Type, value: int | float) -> ir.Value:
    """A 0-d constant of type ``element``."""
    attr = ir.FloatAttr.get(element, value) if isinstance(element, ir.FloatType) else \
        ir.IntegerAttr.get(element, value)
    return stablehlo.ConstantOp(ir.DenseElementsAttr.get_splat(ir.RankedTensorType.get([], element),
                                                               attr)).result


def window_slice(x: ir.Value, dims: list[int], starts: tuple[int, ...], sizes: list[int]) -> ir.Value:
    """``x[..., start:start + size, ...]`` along each of ``dims``; other axes whole."""
    shape = list(ir.RankedTensorType(x.type).shape)
    begin, end = [0] * len(shape), list(shape)
    for d, s, n in zip(dims, starts, sizes):
        begin[d], end[d] = s, s + n
    return stablehlo.SliceOp(x, begin, end, [1] * len(shape)).result


def transpose(x: ir.Value, perm: list[int]) -> ir.Value:
    """``x`` with its axes permuted (``x`` itself for the identity)."""
    return x if perm == sorted(perm) else stablehlo.TransposeOp(x, perm).result


def dot(lhs: ir.Value, rhs: ir.Value, contract_lhs: list[int], contract_rhs: list[int],
        precision: ir.Attribute | None, element: ir.Type | None = None) -> ir.Value:
    """``dot_general`` without batch axes: the result holds the free axes of ``lhs`` then of
    ``rhs``, in order, of type ``element`` (default: the operands')."""
    ls, rs = (list(ir.RankedTensorType(v.type).shape) for v in (lhs, rhs))
    shape = [n for d, n in enumerate(ls) if d not in contract_lhs] + \
        [n for d, n in enumerate(rs) if d not in contract_rhs]
    out = ir.RankedTensorType.get(shape, element or ir.RankedTensorType(lhs.type).element_type)
    dims = stablehlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=[], rhs_batching_dimensions=[],
        lhs_contracting_dimensions=contract_lhs, rhs_contracting_dimensions=contract_rhs)
    return stablehlo.DotGeneralOp(out, lhs, rhs, dims, precision_config=precision).result


def precision_of(op: ir.Operation) -> ir.Attribute | None:
    """``op``'s ``precision_config``, to carry over to the ops that replace it."""
    return op.attributes["precision_config"] if "precision_config" in op.attributes else None
