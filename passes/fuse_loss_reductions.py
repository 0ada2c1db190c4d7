"""fuse_loss_reductions: sibling reductions of same-shaped operands → one variadic ``reduce``.

Losses reduce several quantities of the same shape: Dice sums ``y·ŷ``, ``y²`` and ``ŷ²``; KL
and focal losses sum two terms; the backward pass of a loss reduces its cotangents along the
same axes as the forward pass. Each ``stablehlo.reduce`` reads its operand once; ``k``
independent reductions over the same axes read the data ``k`` times. This pass merges them into
ONE variadic ``reduce`` that walks the index space once and carries ``k`` accumulators.

Merged: single-operand reduces in one block with the same reduction ``dimensions``, the same
operand type, the same init constant and the same one-op body (``add``, ``max``, ``min``,
``multiply``), that do not depend on each other. The merged op is placed where every operand is
already defined and before every user.

Why it is exact: a variadic reduce whose body applies ``body_i(acc_i, x_i)`` independently per
component computes, for each ``i``, the same reduction as the ``i``-th original op (the
components never interact). The association order XLA picks may differ, so sums agree to
rounding, as any two reduction schedules do.

Whether it is FASTER depends on the backend: on XLA:CPU a variadic reduce is compiled by the
loop emitter rather than the fused reduction emitter; see ``benchmarks/`` and
``luxc.passes.default_pipeline``.
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._match import op_of, region_op, splat_value
from luxc.passes._rewrite import PatternRewriter, apply_greedily

NAME = "fuse_loss_reductions"
DESCRIPTION = "sibling reduces over the same axes and shape -> one variadic reduce (one data pass)"

_BODIES = ("stablehlo.add", "stablehlo.maximum", "stablehlo.minimum", "stablehlo.multiply")


def _body_kind(op: ir.Operation) -> str | None:
    inner = region_op(op.regions[0])
    return inner.name if inner is not None and inner.name in _BODIES else None


def _signature(op: ir.Operation) -> tuple | None:
    if op.name != "stablehlo.reduce" or len(op.operands) != 2:
        return None
    kind = _body_kind(op)
    init = splat_value(op.operands[1])
    if kind is None or init is None:
        return None
    dims = tuple(ir.DenseI64ArrayAttr(op.attributes["dimensions"]))
    return (kind, dims, str(op.operands[0].type), str(op.operands[1].type), init)


def _position(block: ir.Block) -> dict:
    return {op.operation: i for i, op in enumerate(block.operations)}


def _defined_at(value: ir.Value, pos: dict) -> int:
    op = op_of(value)
    return -1 if op is None else pos.get(op, -1)


def _first_use(op: ir.Operation, pos: dict) -> int:
    uses = [pos.get(u.owner, len(pos)) for r in op.results for u in r.uses]
    return min(uses, default=len(pos))


def _mergeable(group: list[ir.Operation], pos: dict) -> tuple[list[ir.Operation], int]:
    """The members that can share one placement, and the index to insert the merged op at."""
    group = sorted(group, key=lambda o: pos[o])
    chosen: list[ir.Operation] = []
    for op in group:
        candidate = chosen + [op]
        ready = max(_defined_at(v, pos) for o in candidate for v in o.operands)
        needed = min(_first_use(o, pos) for o in candidate)
        if ready < needed:
            chosen = candidate
    if len(chosen) < 2:
        return [], -1
    ready = max(_defined_at(v, pos) for o in chosen for v in o.operands)
    return chosen, ready + 1


def _merge(group: list[ir.Operation], anchor: ir.Operation, kind: str) -> ir.Operation:
    k = len(group)
    scalar_types = [op.regions[0].blocks[0].arguments[0].type for op in group]
    dims = ir.DenseI64ArrayAttr(group[0].attributes["dimensions"])
    with ir.InsertionPoint(anchor), anchor.location:
        merged = stablehlo.ReduceOp(
            [op.results[0].type for op in group],
            [op.operands[0] for op in group],
            [op.operands[1] for op in group],
            dims,
        )
        block = merged.regions[0].blocks.append(*scalar_types, *scalar_types)
        with ir.InsertionPoint(block):
            args = block.arguments
            results = [
                ir.Operation.create(kind, [scalar_types[i]], [args[i], args[k + i]]).result
                for i in range(k)
            ]
            stablehlo.ReturnOp(results)
    return merged.operation


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of reduces folded into variadic ones."""
    rewrites = 0

    def merge_siblings(op: ir.Operation, rewriter: PatternRewriter) -> bool:
        nonlocal rewrites
        sig = _signature(op)
        if sig is None:
            return True
        block = op.operation.block
        siblings = [o.operation for o in block.operations if _signature(o.operation) == sig]
        if len(siblings) < 2:
            return True
        pos = _position(block)
        chosen, at = _mergeable(siblings, pos)
        if op.operation not in chosen:
            return True
        anchor = list(block.operations)[at].operation
        merged = _merge(chosen, anchor, sig[0])
        for i, member in enumerate(chosen):
            rewriter.replace_op(member, [merged.results[i]])
        rewrites += len(chosen)
        return False

    apply_greedily(module, [("stablehlo.reduce", merge_siblings)])
    return rewrites
