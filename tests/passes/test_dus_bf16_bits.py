"""dus_bf16_bits: golden StableHLO in -> out, what it leaves alone, and a bf16 ``Stack`` step
compiled with it: the same bits as without it, and XLA updating the scan's stacks as 16-bit
integers (in place) rather than converting each whole stack to float32 and back."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from tests.passes._inputs import normal
from tests.support import run_pass_body

_DUS = """
func.func @main(%a: tensor<6x4x8x{t}>, %b: tensor<1x4x8x{t}>, %i: tensor<i32>) -> tensor<6x4x8x{t}> {{
  %c = stablehlo.constant dense<0> : tensor<i32>
  %0 = stablehlo.dynamic_update_slice %a, %b, %i, %c, %c : (tensor<6x4x8x{t}>, tensor<1x4x8x{t}>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<6x4x8x{t}>
  return %0 : tensor<6x4x8x{t}>
}}"""


def test_a_bf16_update_moves_bit_patterns():
    body, rewrites = run_pass_body(_DUS.format(t="bf16"), "dus_bf16_bits")
    assert rewrites == 1
    ops = [line.split(" = ")[1].split(" ")[0] for line in body if " = " in line]
    assert ops == ["stablehlo.constant", "stablehlo.bitcast_convert", "stablehlo.bitcast_convert",
                   "stablehlo.dynamic_update_slice", "stablehlo.bitcast_convert"]
    assert "tensor<6x4x8xui16>" in body[3] and body[3].endswith("-> tensor<6x4x8xui16>")
    assert body[4].endswith("(tensor<6x4x8xui16>) -> tensor<6x4x8xbf16>")


@pytest.mark.parametrize("element", ["f32", "f16", "i32"])
def test_other_updates_are_left_alone(element):
    body, rewrites = run_pass_body(_DUS.format(t=element), "dus_bf16_bits")
    assert rewrites == 0 and "dynamic_update_slice %arg0, %arg1" in body[1]


def _stack_step(passes):
    # A bf16 Stack: lax.scan stacks each block's bf16 residuals with dynamic_update_slice.
    model = luxc.nn.Stack(luxc.nn.Chain(luxc.nn.Dense(16, 32, jax.nn.gelu), luxc.nn.Dense(32, 16)), 3)
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    x = normal(1, (8, 16))
    options = luxc.CompileOptions(mixed_precision="bf16", passes=passes)
    cs = luxc.compile_step(luxc.MSELoss(), (x, jnp.tanh(x)), ts, compile_options=options)
    return cs, cs(ts, (x, jnp.tanh(x)))


def test_a_bf16_stack_step_keeps_its_bits_and_its_stacks_are_updated_as_integers():
    default = list(luxc.passes.default_pipeline("cpu"))
    assert "dus_bf16_bits" in default
    cs, out = _stack_step(default)
    rewrites = {r.name: r.rewrites for r in cs.pass_report}["dus_bf16_bits"]
    assert rewrites >= 2  # the forward scan's bf16 residual stacks
    hlo = cs.as_text("hlo")
    updates = re.findall(r"= (\w+)\[[\d,]+\]\{[\d,]+\} dynamic-update-slice\(", hlo)
    assert updates.count("u16") >= rewrites
    assert "bf16" not in updates
    _, reference = _stack_step([p for p in default if p != "dus_bf16_bits"])
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
