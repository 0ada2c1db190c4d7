"""relu_mask_from_output: golden StableHLO in -> out, what it leaves alone, the predicate on
every class of float (NaN, ±0, ±inf), and whole steps bit-identical with and without it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from tests.passes._lenet import lenet_bits_without
from tests.support import run_pass_body

# jax's relu: the forward pass calls a private function, the gradient compares the input.
_CALLED = """
func.func @main(%x: tensor<4x{t}>, %g: tensor<4x{t}>) -> (tensor<4x{t}>, tensor<4x{t}>) {{
  %y = call @relu(%x) : (tensor<4x{t}>) -> tensor<4x{t}>
  %zero = stablehlo.constant dense<0.0> : tensor<4x{t}>
  %mask = stablehlo.compare {direction}, %x, %zero, FLOAT : (tensor<4x{t}>, tensor<4x{t}>) -> tensor<4xi1>
  %dx = stablehlo.select %mask, %g, %zero : tensor<4xi1>, tensor<4x{t}>
  return %y, %dx : tensor<4x{t}>, tensor<4x{t}>
}}
func.func private @relu(%a: tensor<4x{t}>) -> tensor<4x{t}> {{
  %cst = stablehlo.constant dense<{zero}> : tensor<{t}>
  %z = stablehlo.broadcast_in_dim %cst, dims = [] : (tensor<{t}>) -> tensor<4x{t}>
  %m = stablehlo.maximum %a, %z : tensor<4x{t}>
  return %m : tensor<4x{t}>
}}"""


def _called(t="f32", direction="GT", zero="0.0"):
    return _CALLED.format(t=t, direction=direction, zero=zero)


def test_the_gradient_mask_reads_the_called_relus_output():
    body, rewrites = run_pass_body(_called(), "relu_mask_from_output")
    assert rewrites == 1
    assert "%0 = call @relu(%arg0)" in body[1]
    assert "%1 = stablehlo.compare GT, %0, %cst, FLOAT" in body[2]


_INLINE = """{declaration}
func.func @main(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xi1>) {{
  %zero = stablehlo.constant dense<0.0> : tensor<4xf32>
  %y = stablehlo.maximum %x, %zero : tensor<4xf32>
  %mask = stablehlo.compare GT, %x, %zero, {compare_type} : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xi1>
  return %y, %mask : tensor<4xf32>, tensor<4xi1>
}}"""


def test_an_inline_maximum_is_read_too():
    body, rewrites = run_pass_body(_INLINE.format(declaration="", compare_type="FLOAT"),
                                   "relu_mask_from_output")
    assert rewrites == 1 and "stablehlo.compare GT, %0, %cst" in "\n".join(body)


@pytest.mark.parametrize("direction, zero", [("GE", "0.0"), ("GT", "1.0")])
def test_other_compares_and_other_maxima_are_left_alone(direction, zero):
    # x >= 0 is not max(x, 0) >= 0 (the latter always holds); max(x, 1) > 0 always holds.
    body, rewrites = run_pass_body(_called(direction=direction, zero=zero), "relu_mask_from_output")
    assert rewrites == 0 and f"compare {direction}, %arg0" in "\n".join(body)


def test_a_totalorder_compare_and_a_declared_function_are_left_alone():
    # Under TOTALORDER -0 < +0 and subnormals compare as bits, which maximum may flush to zero.
    text = _INLINE.format(declaration="func.func private @ext(tensor<4xf32>) -> tensor<4xf32>",
                          compare_type="TOTALORDER")
    body, rewrites = run_pass_body(text, "relu_mask_from_output")
    assert rewrites == 0 and "compare GT, %arg0, %cst, TOTALORDER" in "\n".join(body)


def test_a_maximum_computed_after_the_compare_is_not_read():
    text = """
func.func @main(%x: tensor<4xf32>) -> (tensor<4xi1>, tensor<4xf32>) {
  %zero = stablehlo.constant dense<0.0> : tensor<4xf32>
  %mask = stablehlo.compare GT, %x, %zero, FLOAT : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xi1>
  %y = stablehlo.maximum %x, %zero : tensor<4xf32>
  return %mask, %y : tensor<4xi1>, tensor<4xf32>
}"""
    _, rewrites = run_pass_body(text, "relu_mask_from_output")
    assert rewrites == 0


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_the_predicate_is_the_same_for_every_class_of_float(dtype):
    # The identity the pass rests on, as XLA computes it: (max(x, 0) > 0) == (x > 0).
    x = jnp.asarray(np.array([np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-38, -1e-38, 1e-45,
                              -3.0, 2.5], np.float32), dtype)
    mask_of_output = jax.jit(lambda v: jnp.maximum(v, 0) > 0)(x)
    np.testing.assert_array_equal(np.asarray(mask_of_output), np.asarray(x > 0))


def _step_outputs(passes, model, data, loss, **options):
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    cs = luxc.compile_step(loss, data, ts,
                           compile_options=luxc.CompileOptions(passes=passes, **options))
    rewrites = [r.rewrites for r in cs.pass_report if r.name == "relu_mask_from_output"]
    out = cs(ts, data)
    return rewrites, [np.asarray(a, np.float32) for a in jax.tree.leaves(out)]


@pytest.mark.parametrize("mixed_precision", [None, "bf16"])
def test_a_lenet_step_is_bit_identical_with_and_without_the_pass(mixed_precision):
    # LeNet-5's four ReLUs: two convolutions, two Dense layers
    assert lenet_bits_without("relu_mask_from_output", mixed_precision) == 4


def test_a_relu_network_with_nans_and_zeros_in_its_input_is_bit_identical():
    # Pre-activations that are exactly 0, -0 and NaN reach the mask: the pass must not change
    # which of them pass a gradient.
    model = nn.Chain(nn.Dense(3, 5, jax.nn.relu), nn.Dense(5, 2))
    x = jnp.array([[0.0, 0.0, 0.0], [-0.0, 0.0, -0.0], [np.nan, 1.0, 2.0], [1.0, -2.0, 3.0]])
    data = (x, jnp.ones((4, 2)))
    with pytest.warns(luxc.training.NonFiniteDataWarning, match="data\\[0\\] has 1 non-finite value"):
        outputs = [_step_outputs(p, model, data, luxc.MSELoss())
                   for p in (["relu_mask_from_output"], "none")]
    assert outputs[0][0] == [1] and outputs[1][0] == []
    for a, b in zip(outputs[0][1], outputs[1][1]):
        np.testing.assert_array_equal(a, b)
