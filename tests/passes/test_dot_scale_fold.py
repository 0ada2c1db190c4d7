"""dot_scale_fold: golden StableHLO in → out, what it leaves alone, and attention's values and
gradients against the unrewritten program (jax's own lowering is the reference). Also the
tracer's softmax derivative (runtime/compiling/_executable.py ``export``): the same gradients as jax's
default one, with fewer full-size operations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from luxc.runtime.compiling._executable import export, rewrite
from tests.passes._inputs import normal
from tests.support import run_pass_body


def _module(body: str, args: str, out: str) -> str:
    return f"func.func @main({args}) -> tensor<{out}> {{\n{body}\n}}"


def test_a_scale_after_a_product_moves_to_its_smaller_operand():
    # (q · kᵀ) / 8 over (T=16) x (d=4): the scale lands on q (64 elements, not 256).
    body, rewrites = run_pass_body(_module("""
  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [1] : (tensor<16x4xf32>, tensor<16x4xf32>) -> tensor<16x16xf32>
  %c = stablehlo.constant dense<8.0> : tensor<f32>
  %1 = stablehlo.broadcast_in_dim %c, dims = [] : (tensor<f32>) -> tensor<16x16xf32>
  %2 = stablehlo.divide %0, %1 : tensor<16x16xf32>
  return %2 : tensor<16x16xf32>""", "%a: tensor<16x4xf32>, %b: tensor<16x4xf32>", "16x16xf32"), "dot_scale_fold")
    assert rewrites == 1
    assert body == [
        "%cst = stablehlo.constant dense<8.000000e+00> : tensor<16x4xf32>",
        "%0 = stablehlo.divide %arg0, %cst : tensor<16x4xf32>",
        "%1 = stablehlo.dot_general %0, %arg1, contracting_dims = [1] x [1] "
        ": (tensor<16x4xf32>, tensor<16x4xf32>) -> tensor<16x16xf32>",
        "return %1 : tensor<16x16xf32>",
    ]


def test_a_scaled_operand_shared_by_two_products_moves_to_each_smaller_tensor():
    # The scores' cotangent g·0.125 feeds dq = g' · k and dk = g'ᵀ · q: both take the scale on
    # their (16, 4) result, and the (16, 16) multiply goes away.
    body, rewrites = run_pass_body(_module("""
  %c = stablehlo.constant dense<0.125> : tensor<16x16xf32>
  %0 = stablehlo.multiply %g, %c : tensor<16x16xf32>
  %1 = stablehlo.dot_general %0, %k, contracting_dims = [1] x [0] : (tensor<16x16xf32>, tensor<16x4xf32>) -> tensor<16x4xf32>
  %2 = stablehlo.dot_general %0, %q, contracting_dims = [0] x [0] : (tensor<16x16xf32>, tensor<16x4xf32>) -> tensor<16x4xf32>
  %3 = stablehlo.add %1, %2 : tensor<16x4xf32>
  return %3 : tensor<16x4xf32>""", "%g: tensor<16x16xf32>, %k: tensor<16x4xf32>, %q: tensor<16x4xf32>",
        "16x4xf32"), "dot_scale_fold")
    assert rewrites == 2
    assert not any("tensor<16x16xf32>\n" in line or line.startswith("%0 = stablehlo.multiply %arg0")
                   for line in body)
    assert sum("stablehlo.multiply" in line for line in body) == 2
    assert all("tensor<16x16xf32>" not in line.split("=")[-1].split(":")[-1]
               for line in body if "stablehlo.multiply" in line)


@pytest.mark.parametrize("why,body", [
    ("the product is used twice", """
  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [1] : (tensor<16x4xf32>, tensor<16x4xf32>) -> tensor<16x16xf32>
  %c = stablehlo.constant dense<8.0> : tensor<16x16xf32>
  %1 = stablehlo.multiply %0, %c : tensor<16x16xf32>
  %2 = stablehlo.add %1, %0 : tensor<16x16xf32>
  return %2 : tensor<16x16xf32>"""),
    ("the scale is not a constant", """
  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [1] : (tensor<16x4xf32>, tensor<16x4xf32>) -> tensor<16x16xf32>
  %1 = stablehlo.multiply %0, %0 : tensor<16x16xf32>
  return %1 : tensor<16x16xf32>"""),
    ("a zero scale (0 · inf stays NaN)", """
  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [1] : (tensor<16x4xf32>, tensor<16x4xf32>) -> tensor<16x16xf32>
  %c = stablehlo.constant dense<0.0> : tensor<16x16xf32>
  %1 = stablehlo.multiply %0, %c : tensor<16x16xf32>
  return %1 : tensor<16x16xf32>"""),
    ("a constant divided by the product", """
  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [1] : (tensor<16x4xf32>, tensor<16x4xf32>) -> tensor<16x16xf32>
  %c = stablehlo.constant dense<8.0> : tensor<16x16xf32>
  %1 = stablehlo.divide %c, %0 : tensor<16x16xf32>
  return %1 : tensor<16x16xf32>"""),
])
def test_what_it_leaves_alone(why, body):
    _, rewrites = run_pass_body(_module(body, "%a: tensor<16x4xf32>, %b: tensor<16x4xf32>", "16x16xf32"),
                                "dot_scale_fold")
    assert rewrites == 0, why


def test_a_mixed_precision_product_is_left_alone():
    _, rewrites = run_pass_body(_module("""
  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [1] : (tensor<16x4xbf16>, tensor<16x4xbf16>) -> tensor<16x16xf32>
  %c = stablehlo.constant dense<8.0> : tensor<16x16xf32>
  %1 = stablehlo.divide %0, %c : tensor<16x16xf32>
  return %1 : tensor<16x16xf32>""", "%a: tensor<16x4xbf16>, %b: tensor<16x4xbf16>", "16x16xf32"),
        "dot_scale_fold")
    assert rewrites == 0


def _attention_loss(q, k, v):
    # As users write it (benchmarks/workloads.py): the scale after the scores.
    s = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    return jnp.sum(jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v) ** 2)


@pytest.mark.parametrize("d,exact", [(16, True), (12, False)])
def test_attention_gives_the_same_loss_and_gradients(d, exact):
    """1/√16 is a power of two: bit-identical; 1/√12 is not: equal to a few ulps."""
    q, k, v = (normal(i, (2, 32, 3, d)) for i in range(3))  # T > d
    exported = export(jax.value_and_grad(_attention_loss, argnums=(0, 1, 2)), (q, k, v))
    new, (record,) = rewrite(exported, ["dot_scale_fold"])
    assert record.rewrites == 3  # the scores forward; their cotangent into dq and dk
    got, want = jax.tree.leaves(new.call(q, k, v)), jax.tree.leaves(exported.call(q, k, v))
    for a, b in zip(got, want):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


def _full_size_ops(text: str, shape: str) -> int:
    names = ("multiply", "divide", "add", "subtract", "exponential", "select", "reduce")
    return sum(1 for line in text.splitlines()
               if any(f"stablehlo.{n}" in line for n in names) and f": tensor<{shape}> loc" in line)


def test_the_tracer_differentiates_softmax_by_jax_s_own_rule():
    """``export`` traces under ``jax.softmax_custom_jvp(True)`` whatever the process says: the
    gradient equals jax's default derivative to rounding, with fewer (4, 8, 8) operations."""
    x = normal(0, (4, 8, 8))
    w = normal(1, (4, 8, 8))

    def f(x):
        return jnp.sum(jax.nn.softmax(x, axis=-1) * w)

    grad = jax.grad(f)
    ours = export(grad, (x,))
    with jax.softmax_custom_jvp(False):
        theirs = jax.export.export(jax.jit(grad))(x)
        default_grad = jax.jit(grad)(x)
    assert jax.config.jax_softmax_custom_jvp is False  # the process setting is left as it was
    np.testing.assert_allclose(ours.call(x), default_grad, rtol=1e-5, atol=1e-6)
    # y·(g − Σ y·g) against the derivative of exp(x − max) / Σ exp(x − max)
    assert _full_size_ops(ours.mlir_module(), "4x8x8xf32") < _full_size_ops(theirs.mlir_module(), "4x8x8xf32")
