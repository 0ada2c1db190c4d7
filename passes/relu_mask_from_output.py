"""relu_mask_from_output: the ReLU gradient's mask ``x > 0`` read from the activation,
``max(x, 0) > 0``, when the module computes both.

Where it comes from: ``jax.nn.relu`` is a ``custom_jvp`` whose forward is ``max(x, 0)`` (jax
emits it as a small private function, ``call @relu(x)``) and whose gradient selects with
``x > 0``. The mask reads the pre-activation ``x``, so XLA keeps ``x`` alive into the backward
pass. When ``x`` is cheap to recompute by XLA's measure — a convolution that
``conv_few_channels`` wrote as 25 multiply-adds, a bias add — XLA fuses the whole computation
of ``x`` into the backward fusion and runs it twice: on a LeNet-5 step that recomputation was
the slowest fusion of the step (2.1 of 8 ms, at 12 GFLOP/s). Reading ``max(x, 0)``, which the
forward pass has already written, leaves ``x`` one consumer.

Why it is exact: ``max(x, 0) > 0`` and ``x > 0`` are the same predicate for every ``x``: for
``x > 0`` the maximum is ``x``; for ``x ≤ 0`` (``-0`` included) it is a zero, not ``> 0``; for
NaN, ``stablehlo.maximum`` returns NaN and both compares are false. The pass changes which value
the compare reads, never a result bit.

Matched: ``compare GT, x, 0`` (floating point, ``0`` a splat constant) where ``x`` also feeds,
earlier in the same block, a ``stablehlo.maximum(x, 0)`` or a call of a function whose body is
exactly ``return maximum(arg, 0)``.
"""

from __future__ import annotations

from jaxlib.mlir import ir
from jaxlib.mlir.dialects import stablehlo

from luxc.passes._match import op_of, splat_value
from luxc.passes._rewrite import replace_each

NAME = "relu_mask_from_output"
DESCRIPTION = "ReLU gradient mask x > 0 -> max(x, 0) > 0 (reads the activation, not its input)"


def _is_relu_body(func: ir.Operation) -> bool:
    """``func.func @f(%a) { return maximum(%a, 0) }``, the zero a splat constant."""
    if not len(func.regions[0].blocks):  # a declaration: no body
        return False
    block = func.regions[0].blocks[0]
    ops = [o.operation for o in block.operations]
    returned = ops[-1].operands
    if len(block.arguments) != 1 or len(returned) != 1:
        return False
    op = op_of(returned[0])
    return (op is not None and op.name == "stablehlo.maximum"
            and op.operands[0] == block.arguments[0] and splat_value(op.operands[1]) == 0.0)


def _relu_functions(module: ir.Module) -> set[str]:
    names = set()
    for op in module.body.operations:
        op = op.operation
        if op.name == "func.func" and _is_relu_body(op):
            names.add(ir.StringAttr(op.attributes["sym_name"]).value)
    return names


def _is_relu_of(user: ir.Operation, x: ir.Value, relu_functions: set[str]) -> bool:
    if user.name == "stablehlo.maximum":
        return user.operands[0] == x and splat_value(user.operands[1]) == 0.0
    if user.name == "func.call" and len(user.operands) == 1 and len(user.results) == 1:
        return ir.FlatSymbolRefAttr(user.attributes["callee"]).value in relu_functions
    return False


def _activation(op: ir.Operation, relu_functions: set[str]) -> ir.Value | None:
    """The ``max(x, 0)`` computed before ``op`` in its block, for ``op = compare GT, x, 0``."""
    direction = str(op.attributes["comparison_direction"])
    if direction != "#stablehlo<comparison_direction GT>" or splat_value(op.operands[1]) != 0.0:
        return None
    # TOTALORDER orders -0 below +0 and compares subnormals as bits, which maximum may flush
    if "compare_type" in op.attributes and "FLOAT" not in str(op.attributes["compare_type"]):
        return None
    x = op.operands[0]
    if not isinstance(ir.RankedTensorType(x.type).element_type, ir.FloatType):
        return None
    for use in x.uses:
        user = use.owner.operation if hasattr(use.owner, "operation") else use.owner
        if (user != op and user.block == op.block and user.is_before_in_block(op)
                and _is_relu_of(user, x, relu_functions) and user.results[0].type == x.type):
            return user.results[0]
    return None


def _compare_activation(op: ir.Operation, activation: ir.Value) -> ir.Value:
    compare_type = op.attributes["compare_type"] if "compare_type" in op.attributes else None
    return stablehlo.CompareOp(activation, op.operands[1], op.attributes["comparison_direction"],
                               compare_type=compare_type).result


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of compares rewritten."""
    relu_functions = _relu_functions(module)
    return replace_each(module, "stablehlo.compare",
                        lambda op: _activation(op, relu_functions), _compare_activation)
