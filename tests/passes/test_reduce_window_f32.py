"""reduce_window_f32: golden StableHLO in -> out, what it leaves alone, and a bf16 LeNet-5 step
bit-identical with and without it (its windows are maxima: exact in float32)."""

import pytest

from tests.passes._lenet import lenet_bits_without
from tests.support import run_pass_body

_WINDOW = """
func.func @main(%x: tensor<4x6x{t}>, %init: tensor<{t}>) -> tensor<2x3x{t}> {{
  %0 = "stablehlo.reduce_window"(%x, %init) <{{window_dimensions = array<i64: 2, 2>, window_strides = array<i64: 2, 2>}}> ({{
  ^bb0(%a: tensor<{t}>, %b: tensor<{t}>):
    %1 = stablehlo.{op} %a, %b : tensor<{t}>
    stablehlo.return %1 : tensor<{t}>
  }}) : (tensor<4x6x{t}>, tensor<{t}>) -> tensor<2x3x{t}>
  return %0 : tensor<2x3x{t}>
}}"""


def test_a_bf16_max_pool_runs_its_windows_in_float32_and_converts_once():
    body, rewrites = run_pass_body(_WINDOW.format(t="bf16", op="maximum"), "reduce_window_f32")
    assert rewrites == 1
    text = "\n".join(body)
    assert "stablehlo.convert %arg0 : (tensor<4x6xbf16>) -> tensor<4x6xf32>" in text
    assert "stablehlo.convert %arg1 : (tensor<bf16>) -> tensor<f32>" in text
    assert "window_dimensions = array<i64: 2, 2>, window_strides = array<i64: 2, 2>" in text
    assert "stablehlo.maximum %arg2, %arg3 : tensor<f32>" in text
    assert body[-2].endswith(": (tensor<2x3xf32>) -> tensor<2x3xbf16>")
    assert body[-1] == f"return {body[-2].split(' = ')[0]} : tensor<2x3xbf16>"


@pytest.mark.parametrize("t, op", [("f16", "minimum"), ("bf16", "add")])
def test_f16_and_windowed_sums_are_moved_too(t, op):
    body, rewrites = run_pass_body(_WINDOW.format(t=t, op=op), "reduce_window_f32")
    assert rewrites == 1 and f"stablehlo.{op} %arg2, %arg3 : tensor<f32>" in "\n".join(body)


@pytest.mark.parametrize("t, op", [("f32", "maximum"), ("bf16", "multiply")])
def test_float32_and_other_bodies_are_left_alone(t, op):
    body, rewrites = run_pass_body(_WINDOW.format(t=t, op=op), "reduce_window_f32")
    assert rewrites == 0 and not any("convert" in line for line in body)


def test_a_bf16_lenet_step_is_bit_identical_with_and_without_the_pass():
    # the two max poolings of the forward pass
    assert lenet_bits_without("reduce_window_f32", "bf16") == 2
