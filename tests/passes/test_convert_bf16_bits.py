"""convert_bf16_bits: the rewritten conversion gives XLA's bfloat16 bits for every class of
float32, it touches only conversions that leave a function, and a bf16 LeNet-5 step is
bit-identical with and without it."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from luxc.runtime.compiling._executable import rewrite
from tests.passes._lenet import lenet_bits_without
from tests.support import run_pass_body


def _float32_classes() -> np.ndarray:
    special = np.array([
        0x00000000, 0x80000000,              # ±0
        0x00000001, 0x807FFFFF, 0x00008000,  # subnormals (one rounding to 0, one up)
        0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,  # the smallest normal; the largest finite → ±inf
        0x7F800000, 0xFF800000,              # ±inf
        0x7FC00000, 0xFFC00000, 0x7F800001,  # quiet NaNs, a signalling NaN with a low payload
        0xFF800001, 0x7FFF8000, 0x7FC12345,  # payloads that rounding would carry or drop
        0x3F808000, 0x3F818000, 0x3F80C000,  # ties to even (down, up) and above a tie
        0x3F807FFF, 0x477FE000,              # just below a tie; 65504 + a half-ulp
    ], np.uint32)
    rng = np.random.default_rng(0)
    return np.concatenate([special, rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)])


def test_the_integer_conversion_gives_xlas_bits_for_every_class_of_float32():
    bits = _float32_classes()
    x = jnp.asarray(bits.view(np.float32))
    exported = jax_export.export(jax.jit(lambda v: v.astype(jnp.bfloat16)))(x)
    rewritten, (record,) = rewrite(exported, ["convert_bf16_bits"])
    assert record.rewrites == 1 and "reduce_precision" in rewritten.mlir_module()
    ours = np.asarray(rewritten.call(x)).view(np.uint16)
    xlas = np.asarray(exported.call(x)).view(np.uint16)
    np.testing.assert_array_equal(ours, xlas)


_CONVERTS = """
func.func @main(%x: tensor<4xf32>) -> (tensor<4xbf16>, tensor<4xbf16>) {
  %0 = stablehlo.convert %x : (tensor<4xf32>) -> tensor<4xbf16>
  %1 = stablehlo.convert %x : (tensor<4xf32>) -> tensor<4xbf16>
  %2 = stablehlo.add %1, %1 : tensor<4xbf16>
  return %0, %2 : tensor<4xbf16>, tensor<4xbf16>
}"""


def test_only_a_conversion_that_leaves_the_function_is_rewritten():
    body, rewrites = run_pass_body(_CONVERTS, "convert_bf16_bits")
    assert rewrites == 1
    text = "\n".join(body)
    assert text.count("stablehlo.reduce_precision %arg0, format = e8m7") == 1
    # the conversion an add reads stays XLA's: there it fuses into its consumer
    assert text.count("stablehlo.convert %arg0 : (tensor<4xf32>) -> tensor<4xbf16>") == 1
    assert "stablehlo.bitcast_convert" in text and "stablehlo.shift_right_logical" in text


def test_a_dynamic_shape_is_left_to_xla():
    # the integer constants are written with broadcast_in_dim, which takes static shapes only
    text = """
func.func @main(%x: tensor<?x4xf32>) -> tensor<?x4xbf16> {
  %0 = stablehlo.convert %x : (tensor<?x4xf32>) -> tensor<?x4xbf16>
  return %0 : tensor<?x4xbf16>
}"""
    body, rewrites = run_pass_body(text, "convert_bf16_bits")
    assert rewrites == 0 and "stablehlo.convert %arg0" in body[0]


def test_a_bf16_lenet_step_is_bit_identical_with_and_without_the_pass():
    # the four ReLUs: each one's input (passed to jax's private relu) and its result
    assert lenet_bits_without("convert_bf16_bits", "bf16") == 8
