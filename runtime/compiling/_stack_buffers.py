"""A stack that feeds a loop, written into a buffer the step keeps: no fresh pages each call.

``nn.Chain`` runs a long run of one repeated layer as ``Stack``'s loop over the run's
parameters, stacked inside the step (``luxc/nn/_chain_loop.py``): ``jnp.stack`` lowers to a
``concatenate`` whose result the ``while`` reads a slice a turn. XLA:CPU writes that result into
memory it allocates for each call; at 12 transformer blocks it is 37 MiB of fresh pages a step,
each one faulted in again (12.7k minor faults a step against `Stack`'s 0.7k, and 469 against
441 ms with glibc told to keep freed memory, `luxc.retain_host_memory()`).

:func:`lift_stacks` writes each such ``concatenate`` as ``dynamic_update_slice``s of its operands
into a new last argument of ``main`` and returns the written buffer as a new last result; the
runtime (:mod:`._workspace`) donates to each call the buffer the last call returned, so XLA
writes the operands in place, into memory already mapped (12 blocks: 0.1-2.0k faults a step).
Not at 24 blocks: there XLA (jaxlib 0.10.2) merges the 24 writes back into one ``concatenate``
into a temporary and one write of it into the argument, and the faults only halve (24.8k →
12.7k). Neither does an ``optimization_barrier`` on the offsets (XLA:CPU removes barriers before
it simplifies), writing the parts in an order with no two neighbours in turn, nor offsets XLA
cannot compute (a part's bits shifted out: XLA still merged 16 of the 24 writes, and copied the
whole buffer besides; benchmarks/README.md, 2026-12-06).

Why it computes the same values: the operands of a ``concatenate`` tile its result along its
dimension, so the updates, at the running offsets, overwrite every element of the argument and
its starting contents never reach a result; a ``dynamic_update_slice`` moves bits without
arithmetic. What is lifted: a ``concatenate`` at the top of ``main``, static shapes, read by a
``while`` (where XLA materialises it anyway; a ``concatenate`` read by other ops may be fused into
them and never written), whose value ``main`` does not already return.
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._conv import scalar
from luxc.runtime.compiling._scan_buffers import ScanBuffer, _bytes, _final, _uses, lift_into_arguments


def _read_by_a_loop(value: ir.Value) -> bool:
    return any(owner.name == "stablehlo.while" for owner, _ in _uses(value))


def _bits(value: ir.Value, element: ir.Type) -> ir.Value:
    shape = ir.RankedTensorType(value.type).shape
    return stablehlo.BitcastConvertOp(ir.RankedTensorType.get(shape, element), value).result


def _written(buffer: ir.Value, concat: ir.Operation) -> ir.Value:
    """``buffer`` with each operand of ``concat`` written at its offset (at the insertion point)."""
    dim = ir.IntegerAttr(concat.attributes["dimension"]).value
    element = ir.RankedTensorType(buffer.type).element_type
    # XLA:CPU (jaxlib 0.10.2) updates a bfloat16 buffer by converting all of it to float32 and
    # back (passes/dus_bf16_bits.py): 16-bit floats are written as their bit patterns instead.
    bits = ir.IntegerType.get_unsigned(16) if isinstance(element, (ir.BF16Type, ir.F16Type)) else None
    value = _bits(buffer, bits) if bits else buffer
    rank, offset = ir.RankedTensorType(buffer.type).rank, 0
    i32 = ir.IntegerType.get_signless(32)
    zero = scalar(i32, 0)
    for part in concat.operands:
        starts = [scalar(i32, offset) if d == dim else zero for d in range(rank)]
        update = _bits(part, bits) if bits else part
        value = stablehlo.DynamicUpdateSliceOp(value, update, starts).result
        offset += ir.RankedTensorType(part.type).shape[dim]
    return _bits(value, element) if bits else value


def _liftable(concat: ir.Operation, returned: set, min_bytes: int) -> bool:
    kind = ir.RankedTensorType(concat.results[0].type)
    return (kind.has_static_shape and all(ir.RankedTensorType(p.type).has_static_shape
                                          for p in concat.operands)
            and _bytes(kind) >= min_bytes and _read_by_a_loop(concat.results[0])
            and concat.results[0] not in returned and _final(concat.results[0]) not in returned)


def lift_stacks(module: ir.Module, min_bytes: int = 0) -> list[ScanBuffer]:
    """Write every ``concatenate`` of ``main`` that a loop reads, of at least ``min_bytes``, into
    a new argument returned as a new result, in place (both appended, in the same order); return
    what was lifted."""
    def lift(op: ir.Operation, entry: ir.Block, returned: set) -> list[tuple[ir.Value, ir.Value]]:
        if op.name != "stablehlo.concatenate" or not _liftable(op, returned, min_bytes):
            return []
        arg = entry.add_argument(op.results[0].type, ir.Location.unknown())
        with ir.InsertionPoint(op):
            stacked = _written(arg, op)
        op.results[0].replace_all_uses_with(stacked)
        op.erase()
        final = _final(stacked)
        returned.add(final)
        return [(arg, final)]

    return lift_into_arguments(module, lift)
