"""A scan's stacked buffers made arguments of the step: no zero fill, no fresh pages.

jax lowers ``lax.scan``'s stacked outputs (``Stack``'s residuals for the backward pass, the
backward pass's stacked weight gradients) as a ``while`` loop carrying an ``(n, ...)`` buffer
that starts as ``broadcast(0)`` and gets one slice a turn from ``dynamic_update_slice``. XLA:CPU
fills the whole buffer with zeros on every call, in memory it has just allocated; a buffer over
glibc's mmap threshold (32 MiB) is mapped afresh each step and every page faults in again.

When the loop writes every slice before anything reads the buffer, its starting contents never
reach a result. :func:`lift_scan_buffers` makes each such buffer a new last argument of ``main``
and its final value a new last result; the runtime (:mod:`._workspace`) donates to each call the
buffers the previous call returned, so XLA writes the slices in place, in memory already mapped.

What is checked of each buffer (anything else is left as it is):

* a ``while`` at the top of ``main`` carries it, from a ``broadcast_in_dim`` of a constant;
* the loop has a counter that starts at the constant 0, gains 1 a turn and runs while it is
  below ``n`` (signed), ``n ≥ 2`` the buffer's first dimension: turns ``i = 0 … n-1``;
* in the loop's body the buffer has one use, a ``dynamic_update_slice`` at ``(i, 0, …, 0)`` or
  ``(n-1-i, 0, …, 0)`` of a slice one deep (jax's ``dynamic_update_index_in_dim``, inlined or
  called; ``bitcast_convert`` around it allowed), whose result is the body's next value of the
  buffer and read by nothing else; the loop's condition does not read it.

So turn ``i`` writes slice ``i`` (or ``n-1-i``): all ``n`` slices, none read inside the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import func

from luxc.passes._match import constant_value, op_of


@dataclass(frozen=True)
class ScanBuffer:
    """One stacked buffer lifted out of ``main``: its type, as ``(shape, dtype name)``."""

    shape: tuple[int, ...]
    dtype: str


def _int_constant(value: ir.Value) -> int | None:
    attr = constant_value(op_of(value))
    if not isinstance(attr, ir.DenseIntElementsAttr) or not attr.is_splat:
        return None
    if ir.RankedTensorType(value.type).rank != 0:
        return None
    return int(ir.IntegerAttr(ir.DenseIntElementsAttr(attr).get_splat_value()).value)


def _uses(value: ir.Value) -> list[tuple[ir.Operation, int]]:
    return [(use.owner if isinstance(use.owner, ir.Operation) else use.owner.operation,
             use.operand_number) for use in value.uses]


def _only_use(value: ir.Value) -> tuple[ir.Operation, int] | None:
    uses = _uses(value)
    return uses[0] if len(uses) == 1 else None


def _counter(loop: ir.Operation, n: int) -> int | None:
    """The index of ``loop``'s carry that counts its turns ``0 … n-1``, else ``None``."""
    cond_block, body_block = loop.regions[0].blocks[0], loop.regions[1].blocks[0]
    cond_ops = [o.operation for o in cond_block.operations]
    if len(cond_ops) != 2 or cond_ops[0].name != "stablehlo.compare":
        return None
    compare = cond_ops[0]
    if (str(compare.attributes["comparison_direction"]) != "#stablehlo<comparison_direction LT>"
            or "SIGNED" not in str(compare.attributes.get("compare_type", ""))
            or _int_constant(compare.operands[1]) != n
            or list(cond_ops[1].operands) != [compare.results[0]]):
        return None
    arg = compare.operands[0]
    if not isinstance(arg.owner, ir.Block) or arg.owner != cond_block:
        return None
    c = ir.BlockArgument(arg).arg_number
    step = op_of(body_block.operations[len(body_block.operations) - 1].operands[c])
    if (_int_constant(loop.operands[c]) != 0 or step is None or step.name != "stablehlo.add"
            or step.operands[0] != body_block.arguments[c] or _int_constant(step.operands[1]) != 1):
        return None
    return c


def _is_turn_index(index: ir.Value, counter: ir.Value, n: int) -> bool:
    """``index`` is the counter ``i`` or ``n - 1 - i`` (written ``(n - i) - 1``)."""
    if index == counter:
        return True
    outer = op_of(index)
    if outer is None or outer.name != "stablehlo.subtract" or _int_constant(outer.operands[1]) != 1:
        return False
    inner = op_of(outer.operands[0])
    return (inner is not None and inner.name == "stablehlo.subtract"
            and _int_constant(inner.operands[0]) == n and inner.operands[1] == counter)


def _through_bitcast(value: ir.Value) -> ir.Value:
    use = _only_use(value)
    if use is not None and use[0].name == "stablehlo.bitcast_convert":
        return use[0].results[0]
    return value


def _slice_write(buffer: ir.Value) -> tuple[ir.Operation, ir.Value] | None:
    """The one ``dynamic_update_slice`` writing a one-deep slice of ``buffer`` at
    ``(index, 0, …, 0)``, and its result (after a ``bitcast_convert`` back, if any)."""
    use = _only_use(_through_bitcast(buffer))
    if use is None or use[0].name != "stablehlo.dynamic_update_slice" or use[1] != 0:
        return None
    write = use[0]
    update = ir.RankedTensorType(write.operands[1].type)
    whole = ir.RankedTensorType(write.results[0].type)
    if update.shape[0] != 1 or list(update.shape[1:]) != list(whole.shape[1:]):
        return None
    if any(_int_constant(i) != 0 for i in write.operands[3:]):
        return None
    return write, _through_bitcast(write.results[0])


def _writes_slice_i(buffer: ir.Value, counter: ir.Value, n: int, module: ir.Module
                    ) -> ir.Value | None:
    """The body's next value of ``buffer`` when its one use writes the turn's slice."""
    use = _only_use(buffer)
    if use is None:
        return None
    if use[0].name == "func.call" and use[1] == 0 and len(use[0].operands) == 3:
        call = use[0]
        if not _is_turn_index(call.operands[2], counter, n):
            return None
        callee = _function(module, ir.FlatSymbolRefAttr(call.attributes["callee"]).value)
        if callee is None:
            return None
        entry = callee.regions[0].blocks[0]
        found = _slice_write(entry.arguments[0])
        ret = entry.operations[len(entry.operations) - 1].operation
        if (found is None or found[0].operands[2] != entry.arguments[2]
                or not _only_returned(found[1], ret, 0)):
            return None
        return call.results[0]
    found = _slice_write(buffer)
    if found is None or not _is_turn_index(found[0].operands[2], counter, n):
        return None
    return found[1]


def _function(module: ir.Module, name: str) -> ir.Operation | None:
    for op in module.body.operations:
        if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == name:
            return op.operation
    return None


def _liftable(loop: ir.Operation, j: int, module: ir.Module) -> bool:
    init = op_of(loop.operands[j])
    if (init is None or init.name != "stablehlo.broadcast_in_dim"
            or op_of(init.operands[0]) is None
            or op_of(init.operands[0]).name != "stablehlo.constant"):
        return False
    kind = ir.RankedTensorType(loop.operands[j].type)
    if not kind.has_static_shape or kind.rank < 1 or kind.shape[0] < 2:
        # One turn: XLA removes the loop and writes no zeros; as an argument the buffer would
        # only change how XLA fuses the rest (an adversary saw Adam's moments move by an ulp).
        return False
    c = _counter(loop, kind.shape[0])
    if c is None or c == j:
        return False
    cond_block, body_block = loop.regions[0].blocks[0], loop.regions[1].blocks[0]
    if _uses(cond_block.arguments[j]):
        return False
    after = _writes_slice_i(body_block.arguments[j], body_block.arguments[c], kind.shape[0], module)
    ret = body_block.operations[len(body_block.operations) - 1].operation
    return after is not None and _only_returned(after, ret, j)


def _only_returned(value: ir.Value, ret: ir.Operation, position: int) -> bool:
    """``value``'s one use is ``ret``'s operand ``position``: nothing reads the buffer after
    its slice is written (a read would see the slices later turns write)."""
    use = _only_use(value)
    return use is not None and use[0] == ret and use[1] == position


def _final(value: ir.Value) -> ir.Value:
    """``value`` followed through the later loops that only carry it along unchanged."""
    while True:
        nxt = None
        for owner, k in _uses(value):
            if owner.name == "stablehlo.while" and owner.parent.name == "func.func":
                body = owner.regions[1].blocks[0]
                if body.operations[len(body.operations) - 1].operands[k] == body.arguments[k]:
                    nxt = owner.results[k]
        if nxt is None:
            return value
        value = nxt


def _bytes(value_type: ir.Type) -> int:
    kind = ir.RankedTensorType(value_type)
    return math.prod(kind.shape) * max(1, getattr(kind.element_type, "width", 64) // 8)


def lift_scan_buffers(module: ir.Module, min_bytes: int = 0) -> list[ScanBuffer]:
    """Make every provably overwritten scan buffer of ``main`` of at least ``min_bytes`` an
    argument and a result, in place (both appended, in the same order); return what was
    lifted."""
    def lift(op: ir.Operation, entry: ir.Block, returned: set) -> list[tuple[ir.Value, ir.Value]]:
        if op.name != "stablehlo.while":
            return []
        made = []
        for j in range(len(op.operands)):
            if not _liftable(op, j, module) or _bytes(op.operands[j].type) < min_bytes:
                continue
            final = _final(op.results[j])
            if final in returned:
                continue
            init = op_of(op.operands[j])
            arg = entry.add_argument(op.operands[j].type, ir.Location.unknown())
            op.operands[j] = arg
            if not _uses(init.results[0]):
                init.erase()
            made.append((arg, final))
            returned.add(final)
        return made

    return lift_into_arguments(module, lift)


Lift = Callable[[ir.Operation, ir.Block, set], list[tuple[ir.Value, ir.Value]]]


def lift_into_arguments(module: ir.Module, lift: Lift) -> list[ScanBuffer]:
    """What every lift shares: ``lift(op, entry, returned)`` on each op at the top of ``main``
    makes new arguments of ``entry`` and returns ``(argument, value to return)`` pairs (adding
    the values to ``returned``); the values become ``main``'s new last results, in order."""
    main = _function(module, "main")
    if main is None:
        return []
    entry = main.regions[0].blocks[0]
    ret = entry.operations[len(entry.operations) - 1]
    returned = set(ret.operands)
    lifted: list[tuple[ir.Value, ir.Value]] = []
    with ir.Location.unknown(module.context):
        for op in list(entry.operations):
            lifted += lift(op.operation, entry, returned)
        if lifted:
            _append_results(main, ret, [final for _, final in lifted])
    return [ScanBuffer(tuple(ir.RankedTensorType(a.type).shape),
                       str(ir.RankedTensorType(a.type).element_type)) for a, _ in lifted]


def _append_results(main: ir.Operation, ret: ir.Operation, extra: list[ir.Value]) -> None:
    entry = main.regions[0].blocks[0]
    with ir.InsertionPoint(ret):
        func.ReturnOp([*ret.operands, *extra])
    ret.erase()
    inputs = [a.type for a in entry.arguments]
    results = [*ir.FunctionType(ir.TypeAttr(main.attributes["function_type"]).value).results,
               *(v.type for v in extra)]
    main.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs, results))
    for name, count in (("arg_attrs", len(inputs)), ("res_attrs", len(results))):
        if name in main.attributes:
            attrs = list(ir.ArrayAttr(main.attributes[name]))
            attrs += [ir.DictAttr.get({})] * (count - len(attrs))
            main.attributes[name] = ir.ArrayAttr.get(attrs)
