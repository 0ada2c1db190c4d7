"""dot_bf16_canonical and reduce_f32_accumulate: golden StableHLO in -> out, what they leave
alone, the form XLA:CPU then runs (bf16 operands straight into the dot, no tree reduction), and
compiled = eager within the bf16 bound (the step without the passes is the reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn
from tests.passes._inputs import normal
from tests.support import run_pass_body


def _dot(lhs: str, rhs: str, out: str, dims: str, rhs_transposed: str | None = None) -> str:
    pre, b = "", "%b"
    if rhs_transposed:
        pre = (f"%t = stablehlo.transpose %b, dims = [1, 0] : (tensor<{rhs_transposed}>) "
               f"-> tensor<{rhs}>\n  ")
        b, rhs_arg = "%t", rhs_transposed
    else:
        rhs_arg = rhs
    return f"""
func.func @main(%a: tensor<{lhs}>, %b: tensor<{rhs_arg}>) -> tensor<{out}> {{
  {pre}%0 = stablehlo.dot_general %a, {b}, {dims} : (tensor<{lhs}>, tensor<{rhs}>) -> tensor<{out}>
  return %0 : tensor<{out}>
}}"""


def test_a_transposed_right_operand_is_folded_into_the_dot():
    # x . W^T as jax writes it: dot(x, transpose(W)) [1]x[0] -> dot(x, W) [1]x[1]
    body, rewrites = run_pass_body(_dot("4x8xbf16", "8x16xbf16", "4x16xf32",
                                        "contracting_dims = [1] x [0]", rhs_transposed="16x8xbf16"),
                                   "dot_bf16_canonical")
    assert rewrites == 1
    assert body == [
        "%0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [1] "
        ": (tensor<4x8xbf16>, tensor<16x8xbf16>) -> tensor<4x16xf32>",
        "return %0 : tensor<4x16xf32>",
    ]


def test_a_left_operand_contracted_over_its_first_axis_is_transposed_and_pinned():
    # the weight gradient g^T . x, contracted over the batch
    body, rewrites = run_pass_body(_dot("32x16xbf16", "32x8xbf16", "16x8xf32",
                                        "contracting_dims = [0] x [0]"), "dot_bf16_canonical")
    assert rewrites == 1
    assert body == [
        "%0 = stablehlo.transpose %arg0, dims = [1, 0] : (tensor<32x16xbf16>) -> tensor<16x32xbf16>",
        "%1 = stablehlo.reshape %0 : (tensor<16x32xbf16>) -> tensor<1x16x32xbf16>",
        "%2 = stablehlo.optimization_barrier %1 : tensor<1x16x32xbf16>",
        "%3 = stablehlo.reshape %2 : (tensor<1x16x32xbf16>) -> tensor<16x32xbf16>",
        "%4 = stablehlo.dot_general %3, %arg1, contracting_dims = [1] x [0] "
        ": (tensor<16x32xbf16>, tensor<32x8xbf16>) -> tensor<16x8xf32>",
        "return %4 : tensor<16x8xf32>",
    ]


def test_dots_in_form_float32_float16_batched_and_vector_dots_are_left_alone():
    for lhs, rhs, out, dims in [
        ("4x8xbf16", "8x3xbf16", "4x3xf32", "contracting_dims = [1] x [0]"),
        ("4x8xbf16", "3x8xbf16", "4x3xf32", "contracting_dims = [1] x [1]"),
        ("8x4xf32", "8x3xf32", "4x3xf32", "contracting_dims = [0] x [0]"),
        ("8x4xf16", "8x3xf16", "4x3xf32", "contracting_dims = [0] x [0]"),
        ("8x4xbf16", "8x3xbf16", "4x3xbf16", "contracting_dims = [0] x [0]"),
        ("8x1xbf16", "8x3xbf16", "1x3xf32", "contracting_dims = [0] x [0]"),
        ("2x8x4xbf16", "2x8x3xbf16", "2x4x3xf32",
         "batching_dims = [0] x [0], contracting_dims = [1] x [1]"),
    ]:
        body, rewrites = run_pass_body(_dot(lhs, rhs, out, dims), "dot_bf16_canonical")
        assert rewrites == 0 and len(body) == 2, (lhs, rhs, dims)


_SUM = """
func.func @main(%a: tensor<32x16x{t}>) -> tensor<16x{t}> {{
  %z = stablehlo.constant dense<0.0> : tensor<{t}>
  %0 = stablehlo.reduce(%a init: %z) applies stablehlo.{op} across dimensions = [0] : (tensor<32x16x{t}>, tensor<{t}>) -> tensor<16x{t}>
  return %0 : tensor<16x{t}>
}}"""


def test_a_bf16_sum_is_done_in_float32_and_rounded_once():
    body, rewrites = run_pass_body(_SUM.format(t="bf16", op="add"), "reduce_f32_accumulate")
    assert rewrites == 1
    text = "\n".join(body)
    assert "stablehlo.convert %arg0 : (tensor<32x16xbf16>) -> tensor<32x16xf32>" in text
    assert "applies stablehlo.add across dimensions = [0] : (tensor<32x16xf32>, tensor<f32>) -> tensor<16xf32>" in text
    assert body[-2].endswith(": (tensor<16xf32>) -> tensor<16xbf16>") and body[-1] == "return %3 : tensor<16xbf16>"


def test_float32_sums_and_narrow_maxima_are_left_alone():
    for t, op in (("f32", "add"), ("bf16", "maximum")):
        body, rewrites = run_pass_body(_SUM.format(t=t, op=op), "reduce_f32_accumulate")
        assert rewrites == 0 and len(body) == 3


def _mlp_step(passes):
    # every size >= 16: XLA:CPU gives smaller dots to its own loops, in float32
    model = nn.Chain(nn.Dense(24, 32, jax.nn.relu), nn.Dense(32, 16, jnp.tanh), nn.Dense(16, 16))
    ps, st = luxc.setup(0, model)
    x = normal(1, (64, 24))
    y = jax.nn.one_hot(jnp.arange(64) % 16, 16)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    cs = luxc.compile_step(luxc.CrossEntropyLoss(logits=True), (x, y), ts, compile_options=
                           luxc.CompileOptions(passes=passes, mixed_precision="bf16"))
    return cs, cs(ts, (x, y))


def test_a_bf16_step_runs_every_dense_dot_on_bf16_operands_and_equals_the_step_without_the_passes():
    cs, (g1, l1, _, _) = _mlp_step(["dot_f32_accumulate", "dot_bf16_canonical",
                                    "reduce_f32_accumulate"])
    _, (g0, l0, _, _) = _mlp_step("none")
    hlo = cs.as_text("hlo")
    dots = [line for line in hlo.splitlines() if " dot(" in line]
    # XLA:CPU's optimised module: every dot reads bf16 operands (no f32 copy in front)
    params = {line.split("=")[0].strip(): line for line in hlo.splitlines() if "parameter(" in line}
    assert len(dots) == 8  # 3 forward, 3 weight gradients, 2 input gradients
    for d in dots:
        operands = d.split(" dot(")[1].split(")")[0].split(", ")
        assert all("bf16[" in params.get(o, "") for o in operands), d
    assert "reduce-window" not in hlo or all("bf16" not in line for line in hlo.splitlines()
                                             if "reduce-window(" in line)
    assert abs(float(l1) - float(l0)) <= 2.0**-7 * abs(float(l0))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2.0**-6 * float(jnp.max(jnp.abs(b))))


def test_a_bf16_one_channel_convolution_is_summed_in_float32_and_rounded_once():
    from jax import lax

    from luxc.runtime.compiling._executable import rewrite

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = normal(0, (4, 9, 7, 1), jnp.bfloat16)
    w = normal(1, (5, 5, 1, 6), jnp.bfloat16)
    exported = jax.export.export(jax.jit(conv))(x, w)
    new, (record,) = rewrite(exported, ["conv_few_channels"])
    assert record.rewrites == 1
    text = new.mlir_module()
    # the operands converted to float32 once each, the 25-term sum rounded to bf16 once
    assert text.count("-> tensor<4x9x7x1xf32>") == 1 and text.count("-> tensor<5x5x1x6xf32>") == 1
    assert text.count("(tensor<4x5x3x6xf32>) -> tensor<4x5x3x6xbf16>") == 1
    # reference: the float32 convolution of the same bf16 values, rounded once to bf16
    ref = conv(x.astype(jnp.float32), w.astype(jnp.float32)).astype(jnp.bfloat16)
    got = new.call(x, w)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                               rtol=2.0**-8, atol=1e-6)
