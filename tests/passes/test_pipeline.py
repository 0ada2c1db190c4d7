"""luxc.passes: golden StableHLO in → out, and numbers unchanged end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxlib.mlir import ir

import luxc
from luxc import nn, passes
from luxc.runtime._jax_internal import ir_context
from tests.passes._inputs import normal
from tests.passes._lenet import lenet_step


def _run(text: str, name: str) -> tuple[str, int]:
    with ir_context():
        module = ir.Module.parse(text)
        (record,) = passes.run_pipeline(module, [name])
        return str(module), record.rewrites


def _body(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith(("module", "func.func", "}"))]


RSQRT_IN = """
func.func @main(%a: tensor<4xf32>, %b: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
  %one = stablehlo.constant dense<1.0> : tensor<4xf32>
  %s = stablehlo.sqrt %b : tensor<4xf32>
  %c = stablehlo.convert %s : tensor<4xf32>
  %0 = stablehlo.divide %a, %c : tensor<4xf32>
  %1 = stablehlo.divide %one, %s : tensor<4xf32>
  return %0, %1 : tensor<4xf32>, tensor<4xf32>
}"""


def test_fuse_rsqrt_rewrites_both_forms_through_identity_converts():
    out, rewrites = _run(RSQRT_IN, "fuse_rsqrt")
    assert rewrites == 2
    assert _body(out) == [
        "%0 = stablehlo.rsqrt %arg1 : tensor<4xf32>",
        "%1 = stablehlo.multiply %arg0, %0 : tensor<4xf32>",
        "%2 = stablehlo.rsqrt %arg1 : tensor<4xf32>",
        "return %1, %2 : tensor<4xf32>, tensor<4xf32>",
    ]


def test_fuse_rsqrt_leaves_other_divides_alone():
    text = """
func.func @main(%a: tensor<4xf32>, %b: tensor<4xf32>) -> tensor<4xf32> {
  %e = stablehlo.exponential %b : tensor<4xf32>
  %0 = stablehlo.divide %a, %e : tensor<4xf32>
  return %0 : tensor<4xf32>
}"""
    out, rewrites = _run(text, "fuse_rsqrt")
    assert rewrites == 0 and "stablehlo.divide" in out


REDUCE_IN = """
func.func @main(%a: tensor<8x4xf32>, %b: tensor<8x4xf32>) -> (tensor<8xf32>, tensor<8xf32>, tensor<4xf32>) {
  %z = stablehlo.constant dense<0.0> : tensor<f32>
  %ab = stablehlo.multiply %a, %b : tensor<8x4xf32>
  %aa = stablehlo.multiply %a, %a : tensor<8x4xf32>
  %0 = stablehlo.reduce(%ab init: %z) applies stablehlo.add across dimensions = [1] : (tensor<8x4xf32>, tensor<f32>) -> tensor<8xf32>
  %1 = stablehlo.reduce(%aa init: %z) applies stablehlo.add across dimensions = [1] : (tensor<8x4xf32>, tensor<f32>) -> tensor<8xf32>
  %2 = stablehlo.reduce(%ab init: %z) applies stablehlo.add across dimensions = [0] : (tensor<8x4xf32>, tensor<f32>) -> tensor<4xf32>
  return %0, %1, %2 : tensor<8xf32>, tensor<8xf32>, tensor<4xf32>
}"""


def test_fuse_loss_reductions_merges_siblings_over_the_same_axes():
    out, rewrites = _run(REDUCE_IN, "fuse_loss_reductions")
    assert rewrites == 2
    assert _body(out) == [
        "%cst = stablehlo.constant dense<0.000000e+00> : tensor<f32>",
        "%0 = stablehlo.multiply %arg0, %arg1 : tensor<8x4xf32>",
        "%1 = stablehlo.multiply %arg0, %arg0 : tensor<8x4xf32>",
        "%2:2 = stablehlo.reduce(%0 init: %cst), (%1 init: %cst) across dimensions = [1] : "
        "(tensor<8x4xf32>, tensor<8x4xf32>, tensor<f32>, tensor<f32>) -> (tensor<8xf32>, tensor<8xf32>)",
        "reducer(%arg2: tensor<f32>, %arg4: tensor<f32>) (%arg3: tensor<f32>, %arg5: tensor<f32>)  {",
        "%4 = stablehlo.add %arg2, %arg4 : tensor<f32>",
        "%5 = stablehlo.add %arg3, %arg5 : tensor<f32>",
        "stablehlo.return %4, %5 : tensor<f32>, tensor<f32>",
        # A reduce over another axis has another signature and stays on its own.
        "%3 = stablehlo.reduce(%0 init: %cst) applies stablehlo.add across dimensions = [0] : "
        "(tensor<8x4xf32>, tensor<f32>) -> tensor<4xf32>",
        "return %2#0, %2#1, %3 : tensor<8xf32>, tensor<8xf32>, tensor<4xf32>",
    ]


def test_fuse_loss_reductions_respects_dependencies():
    text = """
func.func @main(%a: tensor<8xf32>) -> tensor<f32> {
  %z = stablehlo.constant dense<0.0> : tensor<f32>
  %0 = stablehlo.reduce(%a init: %z) applies stablehlo.add across dimensions = [0] : (tensor<8xf32>, tensor<f32>) -> tensor<f32>
  %b = stablehlo.broadcast_in_dim %0, dims = [] : (tensor<f32>) -> tensor<8xf32>
  %c = stablehlo.subtract %a, %b : tensor<8xf32>
  %1 = stablehlo.reduce(%c init: %z) applies stablehlo.add across dimensions = [0] : (tensor<8xf32>, tensor<f32>) -> tensor<f32>
  return %1 : tensor<f32>
}"""
    out, rewrites = _run(text, "fuse_loss_reductions")
    assert rewrites == 0 and out.count("stablehlo.reduce(") == 2


def test_variadic_reduce_computes_the_same_sums():
    def three_sums(a, b):
        return jnp.sum(a * b, axis=1), jnp.sum(a * a, axis=1), jnp.sum(b * b, axis=1)

    a, b = normal(0, (2, 64, 300))
    exported = jax.export.export(jax.jit(three_sums))(a, b)
    from luxc.runtime.compiling._executable import rewrite

    fused, (record,) = rewrite(exported, ["fuse_loss_reductions"])
    assert record.rewrites == 3
    terms = (a * b, a * a, b * b)
    for x, y, t in zip(exported.call(a, b), fused.call(a, b), terms):
        # Two summation orders of n terms differ by at most ~n·eps·Σ|terms| (Higham, 2002).
        bound = t.shape[1] * np.finfo(np.float32).eps * np.sum(np.abs(np.asarray(t)), axis=1)
        assert np.all(np.abs(np.asarray(x) - np.asarray(y)) <= bound)


def test_available_lists_every_pass_with_a_description():
    listed = passes.available()
    assert set(listed) == {"fuse_rsqrt", "fuse_loss_reductions", "maxpool_grad_select",
                           "conv_few_channels", "conv_depthwise", "conv_depthwise_weight_grad",
                           "conv_full_window_dot", "conv_input_grad_dot", "conv_weight_grad_dot",
                           "dot_flatten", "dot_scale_fold", "dot_swap_operands", "dot_f32_accumulate",
                           "dot_bf16_canonical", "dot_bf16_batched", "reduce_f32_accumulate",
                           "reduce_window_f32", "relu_mask_from_output", "elementwise_bf16_f32",
                           "convert_bf16_bits", "dus_bf16_bits"}
    assert all(isinstance(d, str) and d for d in listed.values())


def test_default_pipeline_only_has_passes_measured_faster_there():
    assert passes.default_pipeline("cpu") == ("maxpool_grad_select", "conv_few_channels",
                                              "conv_depthwise", "conv_depthwise_weight_grad",
                                              "conv_full_window_dot", "conv_input_grad_dot",
                                              "dot_flatten", "dot_scale_fold", "dot_f32_accumulate",
                                              "dot_bf16_canonical", "dot_bf16_batched",
                                              "reduce_f32_accumulate", "reduce_window_f32",
                                              "relu_mask_from_output", "elementwise_bf16_f32",
                                              "convert_bf16_bits", "dus_bf16_bits")
    assert passes.default_pipeline("cuda") == ()  # nothing measured there yet


def test_resolve_names_and_keywords():
    assert passes.resolve("none", "cpu") == ()
    assert passes.resolve("fuse_rsqrt, fuse_loss_reductions", "cpu") == (
        "fuse_rsqrt", "fuse_loss_reductions")
    with pytest.raises(ValueError, match="available passes are maxpool_grad_select, conv_few_channels, conv_depthwise, "
                       "conv_depthwise_weight_grad, conv_full_window_dot, conv_input_grad_dot, "
                       "conv_weight_grad_dot, dot_flatten, dot_scale_fold, dot_swap_operands, fuse_rsqrt"):
        passes.resolve(["nope"], "cpu")


def _five_steps(passes) -> tuple[float, dict, tuple]:
    """A normalising network's loss and parameters after five AutoXLA steps compiled with
    ``passes``, and the step's pass report (LayerNorm's ``/ sqrt`` is what ``fuse_rsqrt``
    rewrites; BatchNorm's training mode already multiplies by an ``rsqrt``)."""
    model = nn.Chain(nn.Dense(8, 32, use_bias=False), nn.BatchNorm(32, jax.nn.relu),
                     nn.LayerNorm(32), nn.Dense(32, 4), jax.nn.sigmoid)
    ps, st = luxc.setup(jax.random.key(0), model)
    x = normal(1, (32, 8))
    y = jnp.asarray((np.random.default_rng(2).random((32, 4)) > 0.5).astype(np.float32))
    options = luxc.CompileOptions(passes=passes)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    for _ in range(5):
        _, loss, _, ts = luxc.training.single_train_step(luxc.AutoXLA(), luxc.DiceCoeffLoss(),
                                                         (x, y), ts, compile_options=options)
    cs = luxc.compile_step(luxc.DiceCoeffLoss(), (x, y), ts, compile_options=options)
    return float(loss), ts.parameters, cs.pass_report


@pytest.fixture(scope="module")
def without_passes():
    """The five steps without passes, compiled once: every pipeline below is compared to them."""
    return _five_steps("none")


@pytest.mark.parametrize("pipeline", [["fuse_rsqrt"], ["fuse_loss_reductions"], "all"])
def test_training_with_a_pass_gives_the_same_numbers(pipeline, without_passes):
    loss, parameters, report = _five_steps(pipeline)
    assert sum(r.rewrites for r in report) > 0
    reference_loss, reference_parameters, _ = without_passes
    assert loss == pytest.approx(reference_loss, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 parameters, reference_parameters)


def _maxpool_grad(window, shape):
    from jax import lax

    def f(x):
        pooled = lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *window, 1), "VALID")
        return jnp.sum(jnp.sin(pooled) * 3)

    return jax.jit(jax.grad(f)), shape


@pytest.mark.parametrize("window,shape,dtype", [((2, 2), (2, 6, 4, 3), jnp.float32),
                                                ((3, 2), (1, 9, 4, 2), jnp.float32),
                                                ((1, 4), (2, 3, 8, 1), jnp.float32),
                                                ((2, 2), (2, 6, 4, 3), jnp.bfloat16),
                                                ((2, 2), (2, 6, 4, 3), jnp.float16)])
def test_maxpool_grad_select_is_bit_identical_even_with_ties(window, shape, dtype):
    """bf16/f16 are selected in float32 (converted back once): still the same bits."""
    from luxc.runtime.compiling._executable import rewrite

    g, shape = _maxpool_grad(window, shape)
    halves = np.round(2 * np.random.default_rng(0).standard_normal(shape)) / 2  # many ties
    x = jnp.asarray(halves.astype(dtype))
    exported = jax.export.export(g)(x)
    new, (record,) = rewrite(exported, ["maxpool_grad_select"])
    assert record.rewrites == 1
    np.testing.assert_array_equal(exported.call(x), new.call(x))
    from luxc.runtime.compiling._executable import module_text

    text = module_text(new.mlir_module_serialized)
    assert "stablehlo.select_and_scatter" not in text
    # The selection runs on float32 (XLA:CPU rounds after every narrow select and max).
    selects = [line for line in text.splitlines() if "stablehlo.select " in line]
    assert selects and all("f32>" in line and "bf16>" not in line and "xf16>" not in line
                           for line in selects)


def test_maxpool_grad_select_leaves_overlapping_windows_alone():
    from jax import lax

    from luxc.runtime.compiling._executable import rewrite

    def f(x):
        return jnp.sum(lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID"))

    exported = jax.export.export(jax.jit(jax.grad(f)))(jnp.ones((1, 7, 7, 1)))
    _, (record,) = rewrite(exported, ["maxpool_grad_select"])
    assert record.rewrites == 0


SELECT_AND_SCATTER_IN = """
func.func @main(%x: tensor<1x2x2x1xf32>, %s: tensor<1x1x1x1xf32>) -> tensor<1x2x2x1xf32> {
  %z = stablehlo.constant dense<0.0> : tensor<f32>
  %0 = "stablehlo.select_and_scatter"(%x, %s, %z) <{padding = dense<0> : tensor<4x2xi64>, window_dimensions = array<i64: 1, 2, 2, 1>, window_strides = array<i64: 1, 2, 2, 1>}> ({
  ^bb0(%a: tensor<f32>, %b: tensor<f32>):
    %c = stablehlo.compare GE, %a, %b, FLOAT : (tensor<f32>, tensor<f32>) -> tensor<i1>
    stablehlo.return %c : tensor<i1>
  }, {
  ^bb0(%a: tensor<f32>, %b: tensor<f32>):
    %c = stablehlo.add %a, %b : tensor<f32>
    stablehlo.return %c : tensor<f32>
  }) : (tensor<1x2x2x1xf32>, tensor<1x1x1x1xf32>, tensor<f32>) -> tensor<1x2x2x1xf32>
  return %0 : tensor<1x2x2x1xf32>
}"""


def test_maxpool_grad_select_golden_text():
    out, rewrites = _run(SELECT_AND_SCATTER_IN, "maxpool_grad_select")
    assert rewrites == 1
    body = _body(out)
    assert sum("stablehlo.slice %arg0" in line for line in body) == 4
    assert sum("stablehlo.select" in line for line in body) == 4
    assert sum("stablehlo.concatenate" in line for line in body) == 3
    assert "select_and_scatter" not in out
    assert body[-1].startswith("return") and "tensor<1x2x2x1xf32>" in body[-1]


@pytest.mark.parametrize("pad,channels_out", [("VALID", 6), ("SAME", 4), (((2, 1), (0, 3)), 3)])
def test_conv_few_channels_computes_the_convolution(pad, channels_out):
    from jax import lax

    from luxc.runtime.compiling._executable import rewrite

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = normal(0, (4, 9, 7, 1))
    w = normal(1, (3, 4, 1, channels_out))
    exported = jax.export.export(jax.jit(conv))(x, w)
    new, (record,) = rewrite(exported, ["conv_few_channels"])
    assert record.rewrites == 1
    np.testing.assert_allclose(new.call(x, w), exported.call(x, w), rtol=1e-5, atol=1e-5)


def test_conv_few_channels_leaves_multichannel_and_strided_convolutions_alone():
    from jax import lax

    from luxc.runtime.compiling._executable import rewrite

    def convs(x3, x1, w3, w1):
        dn = ("NHWC", "HWIO", "NHWC")
        return (lax.conv_general_dilated(x3, w3, (1, 1), "VALID", dimension_numbers=dn),
                lax.conv_general_dilated(x1, w1, (2, 2), "VALID", dimension_numbers=dn))

    args = (jnp.ones((2, 8, 8, 3)), jnp.ones((2, 8, 8, 1)), jnp.ones((3, 3, 3, 4)), jnp.ones((3, 3, 1, 4)))
    _, (record,) = rewrite(jax.export.export(jax.jit(convs))(*args), ["conv_few_channels"])
    assert record.rewrites == 0


def test_lenet_step_with_the_cpu_default_pipeline_matches_no_passes():
    (g0, l0, _, t0), _ = lenet_step("none", None)
    (g1, l1, _, t1), report = lenet_step("default", None)
    assert report == {
        "maxpool_grad_select": 2, "conv_few_channels": 1, "conv_depthwise": 0, "conv_depthwise_weight_grad": 0,
        "conv_full_window_dot": 0,
        "conv_input_grad_dot": 1,
        "dot_flatten": 1, "dot_scale_fold": 0, "dot_f32_accumulate": 0,
        "dot_bf16_canonical": 0, "dot_bf16_batched": 0, "reduce_window_f32": 0,
        "reduce_f32_accumulate": 0, "relu_mask_from_output": 4,
        "elementwise_bf16_f32": 0, "convert_bf16_bits": 0,
        "dus_bf16_bits": 0}  # a float32 step: the mixed-precision passes match nothing
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 t0.parameters, t1.parameters)


CONV_IN = """
func.func @main(%x: tensor<1x3x3x1xf32>, %w: tensor<2x2x1x2xf32>) -> tensor<1x2x2x2xf32> {
  %0 = stablehlo.convolution(%x, %w) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], window = {stride = [1, 1]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64} : (tensor<1x3x3x1xf32>, tensor<2x2x1x2xf32>) -> tensor<1x2x2x2xf32>
  return %0 : tensor<1x2x2x2xf32>
}"""


def test_conv_few_channels_golden_text():
    out, rewrites = _run(CONV_IN, "conv_few_channels")
    assert rewrites == 1
    body = _body(out)
    assert not any("convolution" in line for line in body)
    # One shifted view of the input and one kernel tap per tap: 4 of each, 4 products, 3 sums.
    assert sum(line.split(" = ")[-1].startswith("stablehlo.slice %arg0") for line in body) == 4
    assert sum(line.split(" = ")[-1].startswith("stablehlo.slice %arg1") for line in body) == 4
    assert sum("stablehlo.multiply" in line for line in body) == 4
    assert sum("stablehlo.add" in line for line in body) == 3
    assert "stablehlo.slice %arg0 [0:1, 1:3, 1:3, 0:1]" in out  # the tap at kernel offset (1, 1)


def test_a_complex_constant_passes_through_the_default_pipeline():
    # jaxlib's bindings cannot read a complex constant's value: the passes must skip it.
    def f(xs):
        def turn(c, x):
            return c + x, (c + 1j * x).astype(jnp.complex64)

        _, ys = jax.lax.scan(turn, jnp.zeros(4), xs)
        return jnp.abs(ys).sum(0)

    xs = jnp.linspace(0.0, 1.0, 20).reshape(5, 4)
    with ir_context():
        module = ir.Module.parse(jax.jit(f).lower(xs).as_text())
        passes.run_pipeline(module, passes.default_pipeline("cpu"))
    exe = luxc.runtime.compiling._executable.build(f, (xs,))
    np.testing.assert_allclose(exe.call(xs), jax.jit(f)(xs), rtol=1e-6)
