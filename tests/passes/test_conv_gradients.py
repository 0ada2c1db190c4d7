"""The convolution-gradient passes: golden StableHLO in → out, and the same gradients as
XLA's own convolutions (jax's transpose rules are the independent reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from luxc.runtime.compiling._executable import rewrite
from tests.passes._inputs import normal
from tests.support import run_pass_body

_run = run_pass_body


def _grads(spec, pad, x_shape, w_shape, wrt):
    """``exported`` gradient of ``sum(sin(conv(x, w)))`` w.r.t. argument ``wrt``."""
    def loss(x, w):
        return jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, (1,) * (len(x_shape) - 2), pad,
                                                        dimension_numbers=spec)))

    x = normal(0, x_shape)
    w = normal(1, w_shape)
    return jax.export.export(jax.jit(jax.grad(loss, argnums=wrt)))(x, w), (x, w)


CASES = [  # (dimension numbers, padding, input shape, kernel shape)
    (("NHWC", "HWIO", "NHWC"), "VALID", (4, 12, 12, 6), (5, 5, 6, 16)),
    (("NHWC", "HWIO", "NHWC"), "SAME", (2, 9, 8, 3), (3, 4, 3, 5)),
    (("NCHW", "OIHW", "NCHW"), ((2, 0), (1, 3)), (2, 3, 7, 9), (4, 3, 3, 2)),
    (("NWC", "WIO", "NWC"), "VALID", (3, 10, 4), (3, 4, 2)),
    # Three spatial axes: the taps are added a kernel row (along W) at a time, 3·2 rows.
    (("NDHWC", "DHWIO", "NDHWC"), ((1, 0), (0, 2), (1, 1)), (2, 4, 5, 6, 3), (3, 2, 4, 3, 2)),
]


ONE_CHANNEL = [  # the weight-gradient pass rewrites one-input-channel layers only
    (("NHWC", "HWIO", "NHWC"), "VALID", (8, 28, 28, 1), (5, 5, 1, 6)),
    (("NHWC", "HWIO", "NHWC"), "SAME", (2, 9, 8, 1), (3, 4, 1, 5)),
    (("NCHW", "OIHW", "NCHW"), ((2, 0), (1, 3)), (2, 1, 7, 9), (4, 1, 3, 2)),
]


@pytest.mark.parametrize("wrt,name,case", [(0, "conv_input_grad_dot", c) for c in CASES]
                         + [(1, "conv_weight_grad_dot", c) for c in ONE_CHANNEL])
def test_conv_gradient_passes_give_xlas_gradients(wrt, name, case):
    exported, args = _grads(*case, wrt=wrt)
    new, (record,) = rewrite(exported, [name])
    assert record.rewrites == 1
    assert new.mlir_module().count("stablehlo.convolution(") == 1  # the forward one stays
    np.testing.assert_allclose(new.call(*args), exported.call(*args), rtol=1e-4, atol=1e-4)


def _true_conv_grads(x_shape, w_shape, wrt):
    """``exported`` gradient of ``sum(sin(true_conv(x, w)))``: the kernel flipped, as nn.Conv."""
    def loss(x, w):
        return jnp.sum(jnp.sin(lax.conv_general_dilated(
            x, lax.rev(w, (0, 1)), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))))

    x = normal(0, x_shape)
    w = normal(1, w_shape)
    return jax.export.export(jax.jit(jax.grad(loss, argnums=wrt)))(x, w), (x, w)


def test_conv_input_grad_dot_rewrites_a_true_convolutions_input_gradient_not_its_forward():
    # nn.Conv (Lux's default) reverses its kernel in the forward too; only the gradient is
    # rewritten, as for a cross-correlation.
    exported, args = _true_conv_grads((4, 12, 12, 6), (5, 5, 6, 16), wrt=0)
    new, (record,) = rewrite(exported, ["conv_input_grad_dot"])
    assert record.rewrites == 1
    assert new.mlir_module().count("stablehlo.convolution(") == 1
    np.testing.assert_allclose(new.call(*args), exported.call(*args), rtol=1e-4, atol=1e-4)
    weight_grad, _ = _true_conv_grads((4, 12, 12, 6), (5, 5, 6, 16), wrt=1)
    assert [r.rewrites for r in rewrite(weight_grad, ["conv_input_grad_dot"])[1]] == [0]


def test_each_conv_pass_leaves_the_other_forms_alone():
    spec, pad, x_shape, w_shape = CASES[0]
    forward = jax.export.export(jax.jit(lambda x, w: lax.conv_general_dilated(
        x, w, (1, 1), pad, dimension_numbers=spec)))(jnp.ones(x_shape), jnp.ones(w_shape))
    weight_grad_6ch, _ = _grads(spec, pad, x_shape, w_shape, wrt=1)
    strided, _ = _grads(spec, pad, (2, 9, 9, 1), (3, 3, 1, 2), wrt=0)
    for exported in (forward, weight_grad_6ch):
        _, records = rewrite(exported, ["conv_input_grad_dot", "conv_weight_grad_dot"])
        assert [r.rewrites for r in records] == [0, 0]
    _, (record,) = rewrite(forward, ["conv_weight_grad_dot"])
    assert record.rewrites == 0


def test_conv_input_grad_dot_leaves_a_1x1_kernels_input_gradient_to_xla():
    # One tap: the gradient is one matrix product already, which XLA runs in the activations'
    # layout (taps- and channel-first it was 1.3x slower in ConvMixer-256's step).
    for spec, x_shape, w_shape in [(("NHWC", "HWIO", "NHWC"), (4, 6, 6, 8), (1, 1, 8, 16)),
                                   (("NCHW", "OIHW", "NCHW"), (2, 8, 5, 5), (16, 8, 1, 1))]:
        exported, _ = _grads(spec, "VALID", x_shape, w_shape, wrt=0)
        assert [r.rewrites for r in rewrite(exported, ["conv_input_grad_dot"])[1]] == [0]
    two_taps, _ = _grads(("NHWC", "HWIO", "NHWC"), "SAME", (4, 6, 6, 6), (1, 2, 6, 16), wrt=0)
    assert [r.rewrites for r in rewrite(two_taps, ["conv_input_grad_dot"])[1]] == [1]


def test_conv_input_grad_dot_leaves_wide_gradients_to_xla():
    # From 8 input channels, or a product z over 24 MiB, XLA's convolution was faster
    # (passes/conv_input_grad_dot.py): ResNet-20's 3x3 layers keep XLA's.
    def rewrites(x_shape, w_shape):
        exported, _ = _grads(("NHWC", "HWIO", "NHWC"), "SAME", x_shape, w_shape, wrt=0)
        return rewrite(exported, ["conv_input_grad_dot"])[1][0].rewrites

    assert rewrites((8, 32, 32, 6), (3, 3, 6, 16)) == 1  # z: 9·6·8·1024 floats, 1.7 MiB
    assert rewrites((8, 32, 32, 16), (3, 3, 16, 16)) == 0  # 16 channels
    assert rewrites((128, 24, 24, 6), (5, 5, 6, 16)) == 0  # z 42 MiB


# A true convolution's (nn.Conv's default) input gradient: the forward's kernel k = reverse(w),
# reversed again by jax's transpose rule.
INPUT_GRAD_IN = """
func.func @main(%g: tensor<1x2x2x3xf32>, %w: tensor<2x2x1x3xf32>) -> tensor<1x3x3x1xf32> {
  %k = stablehlo.reverse %w, dims = [0, 1] : tensor<2x2x1x3xf32>
  %r = stablehlo.reverse %k, dims = [0, 1] : tensor<2x2x1x3xf32>
  %0 = stablehlo.convolution(%g, %r) dim_numbers = [b, 0, 1, f]x[0, 1, o, i]->[b, 0, 1, f], window = {pad = [[1, 1], [1, 1]]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64} : (tensor<1x2x2x3xf32>, tensor<2x2x1x3xf32>) -> tensor<1x3x3x1xf32>
  return %0 : tensor<1x3x3x1xf32>
}"""


def _rewritten_once(text: str, name: str) -> tuple[list[str], str]:
    """The body after ``name`` replaced the one convolution, and its one ``dot_general``."""
    body, rewrites = _run(text, name)
    assert rewrites == 1
    assert not any("convolution" in line for line in body)
    (dot,) = [line for line in body if "stablehlo.dot_general" in line]
    return body, dot


def test_conv_input_grad_dot_golden_text():
    body, dot = _rewritten_once(INPUT_GRAD_IN, "conv_input_grad_dot")
    # One product over the 3 channels, taps and output channel first:
    # (3, 2, 2, 1) x (1, 2, 2, 3) -> (2, 2, 1, 1, 2, 2) = (kh, kw, o, b, h, w).
    assert "contracting_dims = [0] x [3]" in dot and "-> tensor<2x2x1x1x2x2xf32>" in dot
    # Two kernel rows, each added in place to the (o, b, 3, 3) total: 2 updates, not 4.
    assert sum("stablehlo.dynamic_update_slice" in line for line in body) == 2
    # Row 0 of the reversed kernel: tap (0, 0) padded to output columns 1:3, tap (0, 1) to 0:2,
    # summed, and added at output rows lo - k = 1:3.
    assert body[8:18] == [
        "%5 = stablehlo.slice %3 [0:1, 0:1, 0:1, 0:1, 0:2, 0:2] : (tensor<2x2x1x1x2x2xf32>) -> tensor<1x1x1x1x2x2xf32>",
        "%6 = stablehlo.reshape %5 : (tensor<1x1x1x1x2x2xf32>) -> tensor<1x1x2x2xf32>",
        "%7 = stablehlo.pad %6, %cst, low = [0, 0, 0, 1], high = [0, 0, 0, 0], interior = [0, 0, 0, 0] "
        ": (tensor<1x1x2x2xf32>, tensor<f32>) -> tensor<1x1x2x3xf32>",
        "%8 = stablehlo.slice %3 [0:1, 1:2, 0:1, 0:1, 0:2, 0:2] : (tensor<2x2x1x1x2x2xf32>) -> tensor<1x1x1x1x2x2xf32>",
        "%9 = stablehlo.reshape %8 : (tensor<1x1x1x1x2x2xf32>) -> tensor<1x1x2x2xf32>",
        "%10 = stablehlo.pad %9, %cst, low = [0, 0, 0, 0], high = [0, 0, 0, 1], interior = [0, 0, 0, 0] "
        ": (tensor<1x1x2x2xf32>, tensor<f32>) -> tensor<1x1x2x3xf32>",
        "%11 = stablehlo.add %7, %10 : tensor<1x1x2x3xf32>",
        "%12 = stablehlo.slice %4 [0:1, 0:1, 1:3, 0:3] : (tensor<1x1x3x3xf32>) -> tensor<1x1x2x3xf32>",
        "%13 = stablehlo.add %12, %11 : tensor<1x1x2x3xf32>",
        "%14 = stablehlo.dynamic_update_slice %4, %13, %c_0, %c_0, %c, %c_0 : (tensor<1x1x3x3xf32>, "
        "tensor<1x1x2x3xf32>, tensor<i64>, tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<1x1x3x3xf32>",
    ]
    # The (o, b, h, w) total back to the convolution's (b, h, w, o).
    assert "stablehlo.transpose %24, dims = [1, 2, 3, 0]" in body[-2]


WEIGHT_GRAD_IN = """
func.func @main(%x: tensor<2x4x4x1xf32>, %g: tensor<2x3x3x5xf32>) -> tensor<2x2x1x5xf32> {
  %0 = stablehlo.convolution(%x, %g) dim_numbers = [f, 0, 1, b]x[i, 0, 1, o]->[0, 1, b, f], window = {} {batch_group_count = 1 : i64, feature_group_count = 1 : i64} : (tensor<2x4x4x1xf32>, tensor<2x3x3x5xf32>) -> tensor<2x2x1x5xf32>
  return %0 : tensor<2x2x1x5xf32>
}"""


def test_conv_weight_grad_dot_golden_text():
    body, _ = _rewritten_once(WEIGHT_GRAD_IN, "conv_weight_grad_dot")
    # The input as (channel, batch, h, w); one 3x3 window per kernel tap (2x2 of them), each
    # flattened to a row; one (4, 18) @ (18, 5) product; reshaped to the kernel (2, 2, 1, 5).
    assert body == [
        "%0 = stablehlo.transpose %arg0, dims = [3, 0, 1, 2] : (tensor<2x4x4x1xf32>) -> tensor<1x2x4x4xf32>",
        "%1 = stablehlo.slice %0 [0:1, 0:2, 0:3, 0:3] : (tensor<1x2x4x4xf32>) -> tensor<1x2x3x3xf32>",
        "%2 = stablehlo.reshape %1 : (tensor<1x2x3x3xf32>) -> tensor<1x18xf32>",
        "%3 = stablehlo.slice %0 [0:1, 0:2, 0:3, 1:4] : (tensor<1x2x4x4xf32>) -> tensor<1x2x3x3xf32>",
        "%4 = stablehlo.reshape %3 : (tensor<1x2x3x3xf32>) -> tensor<1x18xf32>",
        "%5 = stablehlo.slice %0 [0:1, 0:2, 1:4, 0:3] : (tensor<1x2x4x4xf32>) -> tensor<1x2x3x3xf32>",
        "%6 = stablehlo.reshape %5 : (tensor<1x2x3x3xf32>) -> tensor<1x18xf32>",
        "%7 = stablehlo.slice %0 [0:1, 0:2, 1:4, 1:4] : (tensor<1x2x4x4xf32>) -> tensor<1x2x3x3xf32>",
        "%8 = stablehlo.reshape %7 : (tensor<1x2x3x3xf32>) -> tensor<1x18xf32>",
        "%9 = stablehlo.concatenate %2, %4, %6, %8, dim = 0 : (tensor<1x18xf32>, tensor<1x18xf32>, "
        "tensor<1x18xf32>, tensor<1x18xf32>) -> tensor<4x18xf32>",
        "%10 = stablehlo.reshape %arg1 : (tensor<2x3x3x5xf32>) -> tensor<18x5xf32>",
        "%11 = stablehlo.dot_general %9, %10, contracting_dims = [1] x [0] : (tensor<4x18xf32>, "
        "tensor<18x5xf32>) -> tensor<4x5xf32>",
        "%12 = stablehlo.reshape %11 : (tensor<4x5xf32>) -> tensor<2x2x1x5xf32>",
        "return %12 : tensor<2x2x1x5xf32>",
    ]


DOT_IN = """
func.func @main(%g: tensor<2x3x8xf32>, %x: tensor<2x3x4xf32>) -> tensor<8x4xf32> {
  %0 = stablehlo.dot_general %g, %x, contracting_dims = [0, 1] x [0, 1], precision = [DEFAULT, HIGHEST] : (tensor<2x3x8xf32>, tensor<2x3x4xf32>) -> tensor<8x4xf32>
  return %0 : tensor<8x4xf32>
}"""


def test_dot_swap_operands_golden_text():
    body, rewrites = _run(DOT_IN, "dot_swap_operands")
    assert rewrites == 1
    assert body == [
        "%0 = stablehlo.dot_general %arg1, %arg0, contracting_dims = [0, 1] x [0, 1], "
        "precision = [HIGHEST, DEFAULT] : (tensor<2x3x4xf32>, tensor<2x3x8xf32>) -> tensor<4x8xf32>",
        "%1 = stablehlo.transpose %0, dims = [1, 0] : (tensor<4x8xf32>) -> tensor<8x4xf32>",
        "return %1 : tensor<8x4xf32>",
    ]
    # Already the smaller operand first: nothing to do.
    _, rewrites = _run(DOT_IN.replace("tensor<2x3x8xf32>", "tensor<2x3x2xf32>").replace(
        "8x4", "2x4"), "dot_swap_operands")
    assert rewrites == 0


def test_dot_swap_operands_gives_the_same_dense_weight_gradient():
    def loss(w, x):  # a Dense layer on (batch, tokens, features), widening 8 -> 32
        return jnp.sum(jnp.tanh(jnp.matmul(x, w.T)))

    w = normal(0, (32, 8))
    x = normal(1, (4, 5, 8))
    exported = jax.export.export(jax.jit(jax.grad(loss)))(w, x)
    new, (record,) = rewrite(exported, ["dot_swap_operands"])
    assert record.rewrites == 1
    np.testing.assert_allclose(new.call(w, x), exported.call(w, x), rtol=1e-5, atol=1e-5)


def test_a_bf16_input_gradient_is_accumulated_in_float32_and_rounded_once():
    """The bf16 input gradient of LeNet's conv2 shape: the rewrite adds its 25 taps in float32,
    so it is within one bf16 rounding of the float32 gradient of the same bf16 values, and no
    further from it than XLA's own bf16 convolution; its type stays bf16."""
    spec, pad, x_shape, w_shape = CASES[0]

    # The convolution's cotangent is ``c`` itself: the same bf16 values in the float32 reference.
    c = normal(2, (4, 8, 8, 16), jnp.bfloat16)

    def loss(x, w):
        y = lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=spec)
        y = y.astype(jnp.float32)  # the forward stays in the module, its cotangent adds 0
        return jnp.sum(y * c.astype(jnp.float32)) + 0.0 * jnp.sum(jnp.sin(y))

    x = normal(0, x_shape, jnp.bfloat16)
    w = normal(1, w_shape, jnp.bfloat16)
    exported = jax.export.export(jax.jit(jax.grad(loss)))(x, w)
    new, (record,) = rewrite(exported, ["conv_input_grad_dot"])
    assert record.rewrites == 1
    got, xla = new.call(x, w), exported.call(x, w)
    assert got.dtype == jnp.bfloat16
    exact = jax.jit(jax.grad(loss))(x.astype(jnp.float32), w.astype(jnp.float32))
    err = np.abs(np.asarray(got, np.float32) - np.asarray(exact))
    assert np.all(err <= np.abs(np.asarray(exact)) * 2.0 ** -8 + 1e-6)  # one bf16 rounding
    assert err.mean() <= np.abs(np.asarray(xla, np.float32) - np.asarray(exact)).mean()
