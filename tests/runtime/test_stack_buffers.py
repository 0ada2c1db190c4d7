"""A stack a loop reads, written into a buffer the step keeps (runtime/compiling/_stack_buffers.py):
which concatenates qualify (golden StableHLO), and steps that keep the buffer computing the same
bits as steps that write it into fresh memory every call (nn.Chain's looped runs included)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxlib.mlir import ir

import luxc
from luxc.nn import _chain_loop
from luxc.runtime._jax_internal import ir_context
from luxc.runtime.compiling import _workspace
from luxc.runtime.compiling._executable import DonationWarning, build
from luxc.runtime.compiling._scan_buffers import ScanBuffer
from luxc.runtime.compiling._stack_buffers import lift_stacks
from tests.runtime._random import normal
from tests.runtime.test_scan_buffers import four_steps

# A 3x4 stack of a 2x4 and a 1x4 part that a loop reads a row a turn (the sum of its rows).
_STACK = """
func.func @main(%a: tensor<2x4xf32>, %b: tensor<1x4xf32>) -> {results} {{
  %c = stablehlo.concatenate %a, %b, dim = 0 : (tensor<2x4xf32>, tensor<1x4xf32>) -> tensor<3x4xf32>
  %zero = stablehlo.constant dense<0> : tensor<i32>
  %z = stablehlo.constant dense<0.0> : tensor<4xf32>
  %n = stablehlo.constant dense<3> : tensor<i32>
  %one = stablehlo.constant dense<1> : tensor<i32>
  %r:3 = stablehlo.while(%i = %zero, %s = %z, %xs = %c) : tensor<i32>, tensor<4xf32>, tensor<3x4xf32>
  cond {{
    %p = stablehlo.compare LT, %i, %n, SIGNED : (tensor<i32>, tensor<i32>) -> tensor<i1>
    stablehlo.return %p : tensor<i1>
  }} do {{
    %row = stablehlo.dynamic_slice %xs, %i, %zero, sizes = [1, 4] : (tensor<3x4xf32>, tensor<i32>, tensor<i32>) -> tensor<1x4xf32>
    %flat = stablehlo.reshape %row : (tensor<1x4xf32>) -> tensor<4xf32>
    %s2 = stablehlo.add %s, %flat : tensor<4xf32>
    %i2 = stablehlo.add %i, %one : tensor<i32>
    stablehlo.return %i2, %s2, %xs : tensor<i32>, tensor<4xf32>, tensor<3x4xf32>
  }}
  {extra}
  return {returned} : {results}
}}"""

_PLAIN = dict(results="tensor<4xf32>", returned="%r#1", extra="")


def _lift(min_bytes=0, **change):
    with ir_context():
        module = ir.Module.parse(_STACK.format(**{**_PLAIN, **change}))
        lifted = lift_stacks(module, min_bytes)
        module.operation.verify()
        return lifted, str(module).split("func.func @main")[1]


def test_a_stack_a_loop_reads_is_written_into_a_new_argument_and_returned():
    lifted, main = _lift()
    assert lifted == [ScanBuffer((3, 4), "f32")]
    signature, *body = main.splitlines()
    assert signature.startswith("(%arg0: tensor<2x4xf32>, %arg1: tensor<1x4xf32>, "
                                "%arg2: tensor<3x4xf32>) -> (tensor<4xf32>, tensor<3x4xf32>)")
    assert not any("concatenate" in line for line in body)
    writes = [line for line in body if "dynamic_update_slice" in line]
    assert len(writes) == 2 and "%arg2" in writes[0]  # the parts at rows 0 and 2, into arg2
    # The loop hands the stack on unchanged; that value is the new last result.
    (ret,) = [line.strip() for line in body if line.strip().startswith("return ")]
    assert ret.split(" : ")[0].endswith("#2")


@pytest.mark.parametrize("change, why", [
    ({"min_bytes": 49}, "48 bytes, under the floor"),
    ({"results": "tensor<3x4xf32>", "returned": "%c"}, "main returns the stack itself"),
    ({"results": "tensor<3x4xf32>", "returned": "%r#2"}, "main returns it through the loop"),
])
def test_stacks_main_returns_or_under_the_floor_are_left_to_xla(change, why):
    lifted, main = _lift(**change)
    assert lifted == [], why
    assert "concatenate" in main


def test_a_stack_no_loop_reads_is_left_to_xla():
    # XLA may fuse such a concatenate into its readers and never write it.
    text = _STACK.format(**_PLAIN).replace("%xs = %c", "%xs = %a2").replace(
        "  %zero = ", "  %a2 = stablehlo.concatenate %b, %a, dim = 0 : (tensor<1x4xf32>, "
        "tensor<2x4xf32>) -> tensor<3x4xf32>\n  %cc = stablehlo.add %c, %c : tensor<3x4xf32>\n"
        "  %zero = ", 1)
    with ir_context():
        module = ir.Module.parse(text)
        lifted = lift_stacks(module)
        module.operation.verify()
    assert lifted == [ScanBuffer((3, 4), "f32")]  # %a2, which the loop reads; not %c
    assert "stablehlo.concatenate %arg0, %arg1" in str(module)


def _loop_over(stacked):
    def turn(c, w):
        return jnp.tanh(c @ w if w.ndim == 2 else c * w), jnp.sum(c)
    c, ys = jax.lax.scan(turn, jnp.ones(stacked.shape[-1], stacked.dtype), stacked)
    return jnp.sum(c.astype(jnp.float32)) + jnp.sum(ys.astype(jnp.float32))


def _stack_fn(axis):
    def fn(*ws):
        if axis == 0:  # (5, 8, 8): the loop multiplies by one matrix a turn
            return _loop_over(jnp.stack(ws))
        return _loop_over(jnp.concatenate(ws, axis=1))  # (8, 40): one row a turn
    return fn


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("axis", [0, 1])
def test_a_compiled_stack_reuses_its_buffer_and_computes_what_jit_computes(monkeypatch, dtype, axis):
    monkeypatch.setattr(_workspace, "MIN_BYTES", 0)
    fn = _stack_fn(axis)

    def weights(seed):
        return [normal(5 * seed + i, (8, 8), dtype, scale=0.3) for i in range(5)]

    exe = build(fn, weights(0))
    monkeypatch.setattr(_workspace, "LIFT_STACKS", False)
    plain = build(fn, weights(0))
    assert len(exe.workspace) == len(plain.workspace) + 1
    assert [(5, 8, 8), (8, 40)][axis] in [a.shape for a in exe.workspace]
    for seed in range(3):  # later calls get the buffer the last one left holding its stack
        ws = weights(seed)
        np.testing.assert_array_equal(exe.call(*ws), plain.call(*ws))
        if dtype == jnp.float32:  # in bf16 luxc's passes accumulate in f32, as jax.jit does not
            np.testing.assert_array_equal(exe.call(*ws), jax.jit(fn)(*ws))


def _chain_run(monkeypatch, lift: bool, mixed_precision):
    monkeypatch.setattr(_workspace, "LIFT_STACKS", lift)
    monkeypatch.setattr(_workspace, "MIN_BYTES", 0)
    monkeypatch.setattr(_chain_loop, "MIN_RUN_BYTES", 0)
    monkeypatch.setattr(_chain_loop, "MIN_ACTIVATION_RATIO", 0)
    layers = [luxc.nn.Dense(16, 16, jax.nn.gelu) for _ in range(_chain_loop.MIN_REPEATS)]
    return four_steps(luxc.nn.Chain(*layers), mixed_precision)


@pytest.mark.parametrize("mixed_precision", [None, "bf16"])
def test_a_looped_chain_keeps_its_stacked_parameters_and_its_bits(monkeypatch, mixed_precision):
    n = _chain_loop.MIN_REPEATS
    with warnings.catch_warnings():
        warnings.simplefilter("error", DonationWarning)
        cs, losses, params = _chain_run(monkeypatch, True, mixed_precision)
    _, ref_losses, ref_params = _chain_run(monkeypatch, False, mixed_precision)
    # Dense's weight and bias, stacked for the loop: kept between calls.
    shapes = [a.shape for a in cs.executable.workspace]
    assert (n, 16, 16) in shapes and (n, 16) in shapes
    assert losses == ref_losses
    for a, b in zip(params, ref_params, strict=True):
        np.testing.assert_array_equal(a, b)
