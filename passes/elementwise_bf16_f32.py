"""elementwise_bf16_f32: a chain of bfloat16 element-wise operations computed in float32 and
rounded to bfloat16 once, where the chain's value leaves it.

XLA:CPU has no bfloat16 arithmetic: it converts the operands of every bf16 element-wise op to
float32, computes, and converts the result back (``float-normalization``). A chain such as the
tanh-GELU and its gradient, a bias add and a ReLU, or a residual add and a LayerNorm rounds to
bf16 after every link, and a loop fusion that holds those conversions runs at a fraction of its
float32 speed. This pass does XLA's conversion itself, one op at a time, and then drops the
round trips between two links of a chain:

    convert<f32>(convert<bf16>(y))  →  y

where the outer conversion widens an operand for this pass and the inner one rounds the float32
result of an op that a luxc pass computed in float32 (a link of the chain, a dot of
``dot_f32_accumulate``, a sum of ``reduce_f32_accumulate``: :mod:`luxc.passes._marks`). A
chain then rounds where its value is handed to something else (a dot, a reduction, a reshape,
a function's result, the step's outputs) and nowhere inside.

What it changes: the numbers, within bfloat16's rounding: an intermediate value of a chain keeps
float32's precision instead of being rounded to 8 bits of mantissa, which is what XLA's own
``xla_allow_excess_precision`` (on by default) permits it to do. The bf16 step moves towards the
float32 step, never away in expectation; tests/passes/test_elementwise_bf16_f32.py checks the
gradients of three bf16 models against float32 with and without the pass. A conversion the
program writes itself keeps its rounding: a user's ``x.astype(bfloat16)`` (to quantise, to
round on purpose) and the mixed-precision casts of the parameters and inputs. Left alone: the
scalar combiners of reductions, scatters and sorts, and dynamic shapes.

Measured (``python -m benchmarks.ablation``, idle starts): the bf16 GPT of
``examples/charlm.py`` 1.16×, LeNet-5 1.32×, the transformer block 1.13× faster than without it.
"""

from __future__ import annotations

from jaxlib.mlir import ir

from luxc.passes._marks import ROUNDS_RESULT, WIDENS, has_mark, marked_convert
from luxc.passes._match import producer
from luxc.passes._rewrite import replace_each

NAME = "elementwise_bf16_f32"
DESCRIPTION = "bf16 element-wise chains -> float32, rounded to bf16 once where the value leaves"

# The element-wise ops XLA:CPU computes in float32 between two conversions.
WIDENED = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs",
           "exponential", "exponential_minus_one", "log", "log_plus_one", "tanh", "logistic",
           "sqrt", "rsqrt", "cbrt", "power", "sine", "cosine", "tan", "atan2", "floor", "ceil",
           "round_nearest_even", "round_nearest_afz", "sign", "remainder", "clamp", "select")


# Ops whose region is a scalar combiner (``a + b``, ``max(a, b)``), not a chain of the step:
# XLA recognises those bodies as they are.
_COMBINERS = ("stablehlo.reduce", "stablehlo.reduce_window", "stablehlo.select_and_scatter",
              "stablehlo.scatter", "stablehlo.sort", "stablehlo.all_reduce",
              "stablehlo.reduce_scatter", "stablehlo.map")


def _is_bf16(value: ir.Value) -> bool:
    return isinstance(ir.RankedTensorType(value.type).element_type, ir.BF16Type)


def _as_f32(value: ir.Value) -> ir.RankedTensorType:
    return ir.RankedTensorType.get(ir.RankedTensorType(value.type).shape, ir.F32Type.get())


def _float_operands(op: ir.Operation) -> list[int] | None:
    """The indices of the operands to widen, when every float operand and the result are bf16
    (``select``'s predicate and ``clamp``'s bounds included as they come)."""
    if not _is_bf16(op.results[0]) or op.parent.name in _COMBINERS:
        return None
    if not all(ir.RankedTensorType(v.type).has_static_shape for v in (*op.operands, *op.results)):
        return None
    floats = [i for i, v in enumerate(op.operands)
              if isinstance(ir.RankedTensorType(v.type).element_type, ir.FloatType)]
    if not all(_is_bf16(op.operands[i]) for i in floats):
        return None
    return floats


def _widen(op: ir.Operation, floats: list[int]) -> ir.Value:
    operands = [marked_convert(_as_f32(v), v, WIDENS) if i in floats else v
                for i, v in enumerate(op.operands)]
    attributes = {name: op.attributes[name] for name in op.attributes}
    wide = ir.Operation.create(op.name, results=[_as_f32(op.results[0])], operands=operands,
                               attributes=attributes)
    return marked_convert(op.results[0].type, wide.result)


def _round_trip(op: ir.Operation) -> ir.Value | None:
    """``y`` for ``op = convert<f32>(convert<bf16>(y: f32))`` when this pass wrote ``op`` and a
    pass wrote the inner conversion to round an op's result (never the program's own)."""
    if not has_mark(op, WIDENS):
        return None
    narrow = producer(op.operands[0])
    if narrow is None or narrow.name != "stablehlo.convert" or not has_mark(narrow, ROUNDS_RESULT):
        return None
    y = narrow.operands[0]
    return y if y.type == op.results[0].type else None


def run(module: ir.Module) -> int:
    """Rewrite ``module`` in place; return the number of bf16 ops computed in float32."""
    widened = replace_each(module, [f"stablehlo.{name}" for name in WIDENED], _float_operands,
                           _widen)
    replace_each(module, "stablehlo.convert", _round_trip, lambda op, y: y)
    return widened
