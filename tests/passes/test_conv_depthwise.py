"""conv_depthwise: a depthwise convolution and its input gradient as sums of shifted
multiply-adds; conv_depthwise_weight_grad: its kernel gradient (jax's ``batch_group_count``
convolution) as per-channel products and diagonal sums. Checked against XLA's own convolutions
(the module without the pass) and against direct numpy sums."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import luxc
from luxc import nn
from luxc.runtime.compiling._executable import rewrite
from tests.passes._inputs import normal


def _depthwise(x, w, pad, dn=("NHWC", "HWIO", "NHWC")):
    channels = x.shape[dn[0].index("C")]
    return lax.conv_general_dilated(x, w, (1,) * (x.ndim - 2), pad, dimension_numbers=dn,
                                    feature_group_count=channels)


def _numpy_depthwise(x, w, pads):
    """out[b, i, j, c] = Σ_{p, q} xp[b, i + p, j + q, c] · w[p, q, 0, c], straight from the
    definition (NHWC / HWIO)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    kh, kw = w.shape[:2]
    oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return sum(xp[:, p:p + oh, q:q + ow, :] * w[p, q, 0] for p in range(kh) for q in range(kw))


@pytest.mark.parametrize("kernel,pad,pads", [
    ((5, 5), "SAME", ((2, 2), (2, 2))),
    ((3, 2), "VALID", ((0, 0), (0, 0))),
    ((3, 3), ((2, 0), (1, 3)), ((2, 0), (1, 3))),
])
def test_the_forward_convolution_is_the_defining_sum(kernel, pad, pads):
    x = normal(0, (3, 9, 7, 6))
    w = normal(1, (*kernel, 1, 6))
    exported = jax.export.export(jax.jit(lambda x, w: _depthwise(x, w, pad)))(x, w)
    new, (record,) = rewrite(exported, ["conv_depthwise"])
    assert record.rewrites == 1
    assert "stablehlo.convolution" not in new.mlir_module()
    np.testing.assert_allclose(new.call(x, w), _numpy_depthwise(x, w, pads), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new.call(x, w), exported.call(x, w), rtol=1e-5, atol=1e-5)


def test_channels_first_layouts_are_rewritten_too():
    dn = ("NCHW", "OIHW", "NCHW")
    x = normal(0, (2, 5, 8, 8))
    w = normal(1, (5, 1, 3, 3))
    exported = jax.export.export(jax.jit(lambda x, w: _depthwise(x, w, "SAME", dn)))(x, w)
    new, (record,) = rewrite(exported, ["conv_depthwise"])
    assert record.rewrites == 1
    np.testing.assert_allclose(new.call(x, w), exported.call(x, w), rtol=1e-5, atol=1e-5)


def test_1d_depthwise_convolutions_and_their_kernel_gradients_are_rewritten():
    dn = ("NWC", "WIO", "NWC")
    x = normal(0, (3, 11, 64))
    w = normal(1, (4, 1, 64))
    conv = jax.jit(lambda x, w: _depthwise(x, w, ((1, 2),), dn))
    grads = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)))
    for fn, names, count in ((conv, ["conv_depthwise"], 1),
                             (grads, ["conv_depthwise", "conv_depthwise_weight_grad"], 3)):
        exported = jax.export.export(fn)(x, w)
        new, records = rewrite(exported, names)
        assert sum(r.rewrites for r in records) == count
        assert "stablehlo.convolution" not in new.mlir_module()
        for a, b in zip(jax.tree.leaves(new.call(x, w)), jax.tree.leaves(exported.call(x, w))):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _kernel_gradient(x, g, pad, kernel, dn=("NHWC", "HWIO", "NHWC")):
    channels, sizes = x.shape[dn[0].index("C")], iter(kernel)
    w = jnp.zeros([channels if a == "O" else 1 if a == "I" else next(sizes) for a in dn[1]],
                  x.dtype)
    return jax.vjp(lambda w: _depthwise(x, w, pad, dn), w)[1](g)[0]


@pytest.mark.parametrize("kernel,pad,pads", [
    ((5, 5), "SAME", ((2, 2), (2, 2))),
    ((3, 2), "VALID", ((0, 0), (0, 0))),
    ((3, 3), ((2, 0), (1, 3)), ((2, 0), (1, 3))),
])
def test_the_kernel_gradient_is_the_defining_sum(kernel, pad, pads):
    x = normal(0, (3, 9, 7, 64))
    g = normal(1, jax.eval_shape(lambda x: _depthwise(x, jnp.zeros((*kernel, 1, 64)), pad), x).shape)
    exported = jax.export.export(jax.jit(lambda x, g: _kernel_gradient(x, g, pad, kernel)))(x, g)
    new, (record,) = rewrite(exported, ["conv_depthwise_weight_grad"])
    assert record.rewrites == 1
    assert "stablehlo.convolution" not in new.mlir_module()
    # dw[p, q, 0, c] = Σ_{b, i, j} xp[b, i + p, j + q, c] · g[b, i, j, c]
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
    gn = np.asarray(g, np.float64)
    oh, ow = gn.shape[1:3]
    want = np.array([[np.sum(xp[:, p:p + oh, q:q + ow, :] * gn, axis=(0, 1, 2))
                      for q in range(kernel[1])] for p in range(kernel[0])])[:, :, None, :]
    np.testing.assert_allclose(new.call(x, g), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new.call(x, g), exported.call(x, g), rtol=1e-4, atol=1e-4)


def test_the_kernel_gradient_in_channels_first_layouts_and_bf16():
    dn = ("NCHW", "OIHW", "NCHW")
    x = normal(0, (2, 64, 8, 8))
    g = normal(1, (2, 64, 8, 8))
    exported = jax.export.export(jax.jit(lambda x, g: _kernel_gradient(x, g, "SAME", (3, 3), dn)))(x, g)
    new, (record,) = rewrite(exported, ["conv_depthwise_weight_grad"])
    assert record.rewrites == 1
    np.testing.assert_allclose(new.call(x, g), exported.call(x, g), rtol=1e-4, atol=1e-4)

    xb, gb = (jnp.transpose(v, (0, 2, 3, 1)).astype(jnp.bfloat16) for v in (x, g))
    exported = jax.export.export(jax.jit(lambda x, g: _kernel_gradient(x, g, "SAME", (3, 3))))(xb, gb)
    new, (record,) = rewrite(exported, ["conv_depthwise_weight_grad"])
    assert record.rewrites == 1
    got = new.call(xb, gb)
    assert got.dtype == jnp.bfloat16
    f32 = _kernel_gradient(xb.astype(jnp.float32), gb.astype(jnp.float32), "SAME", (3, 3))
    # computed in float32 and rounded once: within half a bf16 step of the float32 gradient
    np.testing.assert_allclose(np.asarray(got, np.float32), f32, rtol=2 ** -8, atol=1e-6)


def test_a_kernel_gradient_over_fewer_than_64_channels_stays_xlas():
    x = normal(0, (2, 8, 8, 32))
    exported = jax.export.export(jax.jit(lambda x, g: _kernel_gradient(x, g, "SAME", (3, 3))))(x, x)
    _, (record,) = rewrite(exported, ["conv_depthwise_weight_grad"])
    assert record.rewrites == 0


def test_both_gradients_match_xla_and_only_the_kernel_gradient_stays_a_convolution():
    x = normal(0, (4, 8, 8, 6))
    w = normal(1, (5, 5, 1, 6))
    grads = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(_depthwise(x, w, "SAME"))), (0, 1)))
    exported = jax.export.export(grads)(x, w)
    new, (record,) = rewrite(exported, ["conv_depthwise"])
    assert record.rewrites == 2  # the forward and the input gradient
    text = new.mlir_module()
    assert text.count("stablehlo.convolution") == 1 and "batch_group_count = 6" in text
    for a, b in zip(new.call(x, w), exported.call(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_bf16_convolution_is_summed_in_float32_and_rounded_once():
    x = normal(0, (2, 8, 8, 4), jnp.bfloat16)
    w = normal(1, (3, 3, 1, 4), jnp.bfloat16)
    exported = jax.export.export(jax.jit(lambda x, w: _depthwise(x, w, "SAME")))(x, w)
    new, (record,) = rewrite(exported, ["conv_depthwise"])
    assert record.rewrites == 1
    want = _numpy_depthwise(x.astype(jnp.float32), w.astype(jnp.float32), ((1, 1), (1, 1)))
    got = new.call(x, w)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(got, jnp.asarray(want, jnp.float32).astype(jnp.bfloat16))


def test_other_grouped_and_strided_convolutions_are_left_alone():
    dn = ("NHWC", "HWIO", "NHWC")

    def convs(x, w_mult, w_group, w):
        return (lax.conv_general_dilated(x, w_mult, (1, 1), "SAME", dimension_numbers=dn,
                                         feature_group_count=4),  # channel multiplier 2
                lax.conv_general_dilated(x, w_group, (1, 1), "SAME", dimension_numbers=dn,
                                         feature_group_count=2),  # two channels a group
                lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn,
                                         feature_group_count=4),  # strided
                lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                         rhs_dilation=(2, 2), feature_group_count=4))

    args = (jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 1, 8)), jnp.ones((3, 3, 2, 4)),
            jnp.ones((3, 3, 1, 4)))
    _, (record,) = rewrite(jax.export.export(jax.jit(convs))(*args), ["conv_depthwise"])
    assert record.rewrites == 0


def test_bf16_operands_with_a_float32_result_are_widened_first():
    # preferred_element_type=float32: the operands are converted, not mixed with f32 zeros
    x = normal(0, (2, 8, 8, 64), jnp.bfloat16)
    w = normal(1, (3, 3, 1, 64), jnp.bfloat16)
    for pad in ("SAME", "VALID"):
        fn = jax.jit(lambda x, w, pad=pad: lax.conv_general_dilated(
            x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=64, preferred_element_type=jnp.float32))
        exported = jax.export.export(fn)(x, w)
        new, (record,) = rewrite(exported, ["conv_depthwise"])
        assert record.rewrites == 1
        np.testing.assert_allclose(new.call(x, w), exported.call(x, w), rtol=1e-5, atol=1e-5)


def test_a_float64_kernel_gradient_is_computed_in_float64():
    with jax.enable_x64(True):
        x = normal(0, (2, 8, 8, 64), jnp.float64)
        exported = jax.export.export(jax.jit(lambda x, g: _kernel_gradient(x, g, "SAME", (3, 3))))(x, x)
        new, (record,) = rewrite(exported, ["conv_depthwise_weight_grad"])
        assert record.rewrites == 1
        got = new.call(x, x)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, exported.call(x, x), rtol=1e-12)


def test_kernel_gradients_the_row_products_would_slow_stay_xlas():
    # a long sequence against a small kernel: (L + P) / T = 259 / 4; and no spatial axis at all
    x = normal(0, (2, 256, 64))
    long = jax.jit(lambda x, g: _kernel_gradient(x, g, ((3, 0),), (4,), ("NWC", "WIO", "NWC")))
    x0 = normal(0, (3, 64))
    flat = jax.jit(lambda x, g: _kernel_gradient(x, g, (), (), ("NC", "OI", "NC")))
    for fn, args in ((long, (x, x)), (flat, (x0, x0))):
        _, (record,) = rewrite(jax.export.export(fn)(*args), ["conv_depthwise_weight_grad"])
        assert record.rewrites == 0


def test_integer_convolutions_are_left_to_xla():
    # the rewrites write float zeros and float32 sums; an integer convolution stayed a crash
    x, w = jnp.ones((2, 8, 8, 4), jnp.int32), jnp.ones((3, 3, 1, 4), jnp.int32)
    x1, w1 = jnp.ones((2, 8, 8, 1), jnp.int32), jnp.ones((3, 3, 1, 4), jnp.int32)

    def convs(x, w, x1, w1):
        return (_depthwise(x, w, "SAME"), lax.conv_general_dilated(
            x1, w1, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))

    exported = jax.export.export(jax.jit(convs))(x, w, x1, w1)
    new, records = rewrite(exported, ["conv_depthwise", "conv_few_channels"])
    assert [r.rewrites for r in records] == [0, 0]
    for a, b in zip(new.call(x, w, x1, w1), exported.call(x, w, x1, w1)):
        np.testing.assert_array_equal(a, b)


def test_a_conv_mixer_step_with_the_default_pipeline_trains_as_without_passes():
    # Lux's ConvMixer tutorial (examples/lux/CIFAR10.py): depthwise 5x5 convolutions
    dim = 64  # wide enough for the kernel gradient's rewrite
    depthwise = nn.Chain(nn.Conv((5, 5), dim, dim, jax.nn.relu, groups=dim, pad=nn.SamePad()),
                         nn.BatchNorm(dim))
    model = nn.Chain(nn.Conv((2, 2), 3, dim, jax.nn.relu, stride=2), nn.BatchNorm(dim),
                     nn.SkipConnection(depthwise, lambda a, b: a + b), nn.Conv((1, 1), dim, dim),
                     nn.GlobalMeanPool(), nn.FlattenLayer(), nn.Dense(dim, 10))
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    x = normal(2, (16, 12, 12, 3))
    y = jax.nn.one_hot(jnp.arange(16) % 10, 10)
    results = {}
    for name in ("none", "default"):
        cs = luxc.compile_step(luxc.CrossEntropyLoss(logits=True), (x, y),
                               ts.replace(cache=luxc.runtime.ExecutableCache()),
                               compile_options=luxc.CompileOptions(passes=name))
        results[name] = cs(ts, (x, y))
        if name == "default":
            report = {r.name: r.rewrites for r in cs.pass_report}
            assert report["conv_depthwise"] == 2 and report["conv_depthwise_weight_grad"] == 1
            assert report["conv_full_window_dot"] == 1  # the 1x1 convolution's kernel gradient
    (g0, l0, _, _), (g1, l1, _, _) = results["none"], results["default"]
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# conv_full_window_dot: a convolution whose window is its whole input (a 1x1 weight gradient)

def _one_by_one(x, w, dn=("NHWC", "HWIO", "NHWC")):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn)


@pytest.mark.parametrize("dn", [("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")])
def test_a_1x1_kernel_gradient_is_one_product_over_the_batch_and_image(dn):
    x = normal(0, (4, 6, 5, 8) if dn[0] == "NHWC" else (4, 8, 6, 5))
    w = jnp.zeros((1, 1, 8, 16) if dn[1] == "HWIO" else (16, 8, 1, 1))
    g = normal(1, jax.eval_shape(lambda x, w: _one_by_one(x, w, dn), x, w).shape)
    dw = jax.jit(lambda x, g: jax.vjp(lambda w: _one_by_one(x, w, dn), w)[1](g)[0])
    exported = jax.export.export(dw)(x, g)
    new, (record,) = rewrite(exported, ["conv_full_window_dot"])
    assert record.rewrites == 1 and "stablehlo.convolution" not in new.mlir_module()
    # dw[i, o] = Σ_{b, h, w} x[b, h, w, i] · g[b, h, w, o]
    xs, gs = ((v if dn[0] == "NHWC" else jnp.moveaxis(v, 1, -1)) for v in (x, g))
    want = np.einsum("bhwi,bhwo->io", np.asarray(xs, np.float64), np.asarray(gs, np.float64))
    want = want[None, None] if dn[1] == "HWIO" else want.T[:, :, None, None]
    np.testing.assert_allclose(new.call(x, g), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new.call(x, g), exported.call(x, g), rtol=1e-5, atol=1e-5)


def test_a_dense_layer_written_as_a_whole_image_convolution_is_one_product():
    x = normal(0, (4, 5, 5, 3), jnp.bfloat16)
    w = normal(1, (5, 5, 3, 7), jnp.bfloat16)
    exported = jax.export.export(jax.jit(_one_by_one))(x, w)
    new, (record,) = rewrite(exported, ["conv_full_window_dot"])
    assert record.rewrites == 1
    got = new.call(x, w)
    assert got.shape == (4, 1, 1, 7) and got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               np.asarray(exported.call(x, w), np.float32), rtol=2 ** -7, atol=1e-2)


def test_padded_smaller_window_or_mixed_type_convolutions_are_left_alone():
    x = jnp.ones((2, 5, 5, 3))
    cases = [
        lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")),
        lambda x, w: _one_by_one(x, w[:3, :3]),
        lambda x, w: lax.conv_general_dilated(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (1, 1),
                                              "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                              preferred_element_type=jnp.float32),
    ]
    for fn in cases:
        exported = jax.export.export(jax.jit(fn))(x, jnp.ones((5, 5, 3, 4)))
        _, (record,) = rewrite(exported, ["conv_full_window_dot"])
        assert record.rewrites == 0
