"""Scale, Bilinear, AlternatePrecision, AlphaDropout, VariationalHiddenDropout, NoOpLayer,
ReshapeLayer, SelectDim, FlattenLayer(N=) and Maxout against independent computations and
Lux's own tests (issue 30).

References: Lux.jl 6f4b96c ``src/layers/basic.jl``, ``dropout.jl``, ``containers.jl``
(``Maxout``), LuxLib ``src/impl/dropout.jl`` (``alpha_dropout``), and the tests cited per test
from ``test/core_layers/basic_tests.jl`` and ``dropout_tests.jl``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import single_train_step


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_scale_is_the_elementwise_affine_map_with_luxs_defaults():
    # basic_tests.jl "Scale": Scale(10, 100) has weight and bias (10, 100); use_bias=false
    # drops the bias; Scale(2; init_weight=ones32, init_bias=ones32) on [1 2; 3 4] adds one.
    layer = nn.Scale(10, 100)
    ps, _ = luxc.setup(0, layer)
    assert ps["weight"].shape == ps["bias"].shape == (10, 100)
    np.testing.assert_array_equal(ps["weight"], np.ones((10, 100)))  # Lux's docstring: ones32
    assert "bias" not in luxc.setup(0, nn.Scale(10, 100, jax.nn.relu, use_bias=False))[0]
    ones = lambda k, s, d: jnp.ones(s, d)
    plus_one = nn.Scale(2, init_weight=ones, init_bias=ones)
    y, _ = plus_one(jnp.array([[1.0, 2.0], [3.0, 4.0]]), *luxc.setup(0, plus_one))
    np.testing.assert_array_equal(y, [[2.0, 3.0], [4.0, 5.0]])
    act = nn.Scale(3, 4, jnp.tanh)
    w, b, x = _rand(1, 3, 4), _rand(2, 3, 4), _rand(3, 5, 3, 4)
    y, _ = act(jnp.asarray(x), {"weight": jnp.asarray(w), "bias": jnp.asarray(b)}, {})
    np.testing.assert_allclose(np.asarray(y), np.tanh(w * x + b), rtol=1e-6)
    # Julia's broadcasting, numpy's here: Lux's Scale(10, 5) on randn(10) gives (10, 5).
    assert nn.Scale(5, 10)(jnp.ones(10), *luxc.setup(0, nn.Scale(5, 10)))[0].shape == (5, 10)
    with pytest.raises(nn.LayerShapeError, match=r"broadcast with \(3, 4\); received \(5, 4, 3\)"):
        act(jnp.ones((5, 4, 3)), {"weight": jnp.asarray(w), "bias": jnp.asarray(b)}, {})
    with pytest.raises(ValueError, match="Scale: dims must be positive ints"):
        nn.Scale(0, 3)


def test_bilinear_is_x_w_y_per_output():
    layer = nn.Bilinear((3, 4), 5, jnp.tanh)
    ps, st = luxc.setup(0, layer)
    assert ps["weight"].shape == (5, 3, 4) and ps["bias"].shape == (5,)
    x, y = _rand(4, 2, 7, 3), _rand(5, 2, 7, 4)
    z, _ = layer((jnp.asarray(x), jnp.asarray(y)), ps, st)
    w, b = np.asarray(ps["weight"]), np.asarray(ps["bias"])
    expected = np.tanh(np.stack([np.sum((x @ w[o]) * y, -1) for o in range(5)], -1) + b)
    np.testing.assert_allclose(np.asarray(z), expected, rtol=1e-5, atol=1e-6)
    same = nn.Bilinear(3, 2)  # Lux's Bilinear(in12 => out); one x is used as both inputs
    ps2, _ = luxc.setup(1, same)
    np.testing.assert_array_equal(same(jnp.asarray(x), ps2, {})[0],
                                  same((jnp.asarray(x), jnp.asarray(x)), ps2, {})[0])


def test_bilinear_follows_luxs_tests_and_docstring_init():
    # basic_tests.jl "Two-streams zero sum": zero inputs, zero bias → zero output.
    zeros = lambda k, s, d: jnp.zeros(s, d)
    layer = nn.Bilinear((2, 1), 3, init_bias=zeros)
    ps, st = luxc.setup(0, layer)
    z, _ = layer((jnp.zeros((1, 2)), jnp.zeros((1, 1))), ps, st)
    assert z.shape == (1, 3) and float(jnp.sum(z**2)) == 0.0
    # "SkipConnection recombinator": Dense(2 => 3), Bilinear((3, 2) => 5) on (2, 7, 11) gives
    # (5, 7, 11); batch-first (11, 7, 2) → (11, 7, 5).
    skip = nn.SkipConnection(nn.Dense(2, 3), nn.Bilinear((3, 2), 5))
    out, _ = skip(jnp.ones((11, 7, 2)), *luxc.setup(0, skip))
    assert out.shape == (11, 7, 5)
    # Lux's docstring: weight and bias U(±1/√in1).
    w = np.abs(np.asarray(luxc.setup(0, nn.Bilinear((16, 40), 50))[0]["weight"]))
    assert 0.99 * 0.25 < w.max() <= 0.25
    with pytest.raises(nn.LayerShapeError, match="x and y need the same leading axes"):
        layer((jnp.zeros((2, 2)), jnp.zeros((3, 1))), ps, st)
    with pytest.raises(nn.LayerShapeError, match="expects 1 features on axis -1"):
        layer((jnp.zeros((2, 2)), jnp.zeros((2, 2))), ps, st)


def test_alternate_precision_casts_the_input_and_back():
    seen = []
    spy = nn.WrappedFunction(lambda x: (seen.append(x.dtype), x * 3)[1])
    layer = nn.AlternatePrecision(jnp.float32, spy)
    y, _ = layer(jnp.ones((2, 3), jnp.bfloat16), {}, {})
    assert seen == [jnp.float32] and y.dtype == jnp.bfloat16
    norm = nn.RMSNorm(8)
    wrapped = nn.AlternatePrecision(jnp.float32, norm)
    ps, st = luxc.setup(0, wrapped)
    assert list(ps) == ["scale"]  # the layer's own parameters: no extra level, as Lux
    x = jnp.asarray(_rand(6, 4, 8) * 100, jnp.bfloat16)
    ref = norm(x.astype(jnp.float32), ps, st)[0].astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(wrapped(x, ps, st)[0], np.float32),
                                  np.asarray(ref, np.float32))
    assert wrapped.summary() == "AlternatePrecision{float32}(RMSNorm((8,)))"
    with pytest.raises(ValueError, match="dtype must be a floating dtype .* received 'int32'"):
        nn.AlternatePrecision("int32", norm)


def test_alpha_dropout_is_luxlibs_affine_formula_and_keeps_selu_statistics():
    p = 0.2
    layer = nn.AlphaDropout(p)
    _, st = luxc.setup(0, layer)
    x = _rand(7, 400, 500)
    y, st2 = layer(jnp.asarray(x), {}, st)
    a = -1.7580993408473766
    scale = 1 / np.sqrt((1 - p) * (1 + p * a * a))
    bias = -scale * a * p
    y = np.asarray(y)
    kept = np.isclose(y, scale * x + bias, atol=1e-5)
    dropped = np.isclose(y, scale * a + bias, atol=1e-5)
    assert np.all(kept | dropped) and abs(dropped.mean() - p) < 0.01
    assert abs(y.mean()) < 0.01 and abs(y.var() - 1) < 0.01  # mean 0, variance 1 kept
    # dropout_tests.jl "AlphaDropout": the key advances; the same state, the same output;
    # test mode is the identity.
    assert not np.array_equal(st2["rng"], st["rng"])
    np.testing.assert_array_equal(layer(jnp.asarray(x), {}, st)[0], y)
    np.testing.assert_array_equal(layer(jnp.asarray(x), {}, luxc.testmode(st))[0], x)
    grad = jax.grad(lambda v: jnp.sum(layer(v, {}, st)[0]))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), np.where(kept, scale, 0.0), rtol=1e-6)
    np.testing.assert_array_equal(nn.AlphaDropout(1.0)(jnp.asarray(x), {}, st)[0], 0 * x)
    with pytest.raises(ValueError, match=r"AlphaDropout: p must be in \[0, 1\]; received 1.5"):
        nn.AlphaDropout(1.5)


def test_variational_hidden_dropout_keeps_its_mask_until_reset():
    # dropout_tests.jl "VariationalHiddenDropout": the mask is kept across calls, the same
    # state gives the same output, update_state(st, :update_mask, Val(true)) draws a new one.
    layer = nn.VariationalHiddenDropout(0.5)
    _, st = luxc.setup(0, layer)
    assert st["mask"] is None and st["update_mask"] == nn.Val(True)
    x = jnp.asarray(_rand(8, 6, 5))
    y1, st1 = layer(x, {}, st)
    mask = np.asarray(st1["mask"])
    assert set(np.unique(mask)) <= {0.0, 2.0} and st1["update_mask"] == nn.Val(False)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(x) * mask)
    x2 = jnp.asarray(_rand(9, 6, 5))
    y2, st2 = layer(x2, {}, st1)
    np.testing.assert_array_equal(np.asarray(y2), np.asarray(x2) * mask)  # same mask
    np.testing.assert_array_equal(st2["rng"], st1["rng"])
    reset = nn.update_state(st2, "update_mask", nn.Val(True))
    _, st3 = layer(x, {}, reset)
    assert not np.array_equal(np.asarray(st3["mask"]), mask)
    y_test, st_test = layer(x, {}, luxc.testmode(st1))
    np.testing.assert_array_equal(y_test, x)
    assert st_test["mask"] is st1["mask"]
    channels = nn.VariationalHiddenDropout(0.5, dims=-1)  # one value per feature
    _, stc = channels(x, {}, luxc.setup(1, channels)[1])
    assert stc["mask"].shape == (1, 5)
    with pytest.raises(nn.LayerShapeError, match=r"stored mask of shape \(6, 5\) does not fit"):
        layer(jnp.ones((2, 7)), {}, st1)


def test_noop_reshape_select_and_flatten_translate_luxs_shapes():
    assert nn.NoOpLayer()({"x": 2, "b": 5}, {}, {}) == ({"x": 2, "b": 5}, {})  # basic_tests.jl
    # A column-major Julia array J of size (d1, ..., N) is the row-major array J.T here.
    jl = np.arange(18.0).reshape(6, 3, order="F")
    y, _ = nn.ReshapeLayer((3, 2))(jnp.asarray(jl.T), {}, {})  # Lux: ReshapeLayer((2, 3))
    np.testing.assert_array_equal(y, np.reshape(jl, (2, 3, 3), order="F").T)
    with pytest.raises(nn.LayerShapeError, match=r"\(6,\) \(6 elements\) cannot be reshaped "
                                                 r"to \(4, 2\)"):
        nn.ReshapeLayer((4, 2))(jnp.ones((3, 6)), {}, {})
    x4 = jnp.asarray(_rand(10, 2, 3, 4, 6))  # Julia (6, 4, 3, 2)
    # Lux SelectDim(3, 1) → (6, 4, 2); SelectDim(2, 1:2) → (6, 2, 3, 2)
    np.testing.assert_array_equal(nn.SelectDim(-3, 0)(x4, {}, {})[0], x4[:, 0])
    np.testing.assert_array_equal(nn.SelectDim(-2, range(2))(x4, {}, {})[0], x4[:, :, :2])
    np.testing.assert_array_equal(nn.SelectDim(1, -1)(x4, {}, {})[0], x4[:, -1])
    with pytest.raises(nn.LayerShapeError, match="index 3 is outside axis 1 of size 3"):
        nn.SelectDim(1, 3)(x4, {}, {})
    # Lux FlattenLayer() on (6, 3, 2) → (18, 2); FlattenLayer(N=2) on (2, 3, 4, 5) → (6, 4, 5).
    assert nn.FlattenLayer()(jnp.ones((2, 3, 6)), {}, {})[0].shape == (2, 18)
    jl4 = np.arange(120.0).reshape(2, 3, 4, 5, order="F")
    y, _ = nn.FlattenLayer(N=2)(jnp.asarray(jl4.T), {}, {})
    np.testing.assert_array_equal(y, np.reshape(jl4, (6, 4, 5), order="F").T)
    with pytest.raises(nn.LayerShapeError, match="a batch axis and at least 3 more"):
        nn.FlattenLayer(N=3)(jnp.ones((2, 3, 4)), {}, {})


def test_maxout_is_the_elementwise_max_of_its_layers():
    a, b, c = nn.Dense(3, 4), nn.Dense(3, 4, jnp.tanh), nn.Dense(3, 4)
    mo = nn.Maxout(a, b, c)
    ps, st = luxc.setup(0, mo)
    x = jnp.asarray(_rand(11, 5, 3))
    outs = [layer(x, ps[f"layer_{i + 1}"], {})[0] for i, layer in enumerate((a, b, c))]
    np.testing.assert_array_equal(mo(x, ps, st)[0], np.maximum.reduce([np.asarray(o) for o in outs]))
    named = nn.Maxout(left=a, right=b)
    assert sorted(luxc.setup(0, named)[0]) == ["left", "right"]
    made = nn.Maxout(lambda: nn.Dense(3, 4), 3)
    psm, _ = luxc.setup(0, made)
    assert luxc.parameter_count(made) == 3 * 16
    assert not np.array_equal(psm["layer_1"]["weight"], psm["layer_2"]["weight"])
    with pytest.raises(TypeError, match="Maxout: layer_2 must be a luxc layer; received str"):
        nn.Maxout(a, "relu")


def _misc_model():
    return nn.Chain(
        nn.Scale(6, jnp.tanh), nn.Bilinear(6, 8), nn.AlphaDropout(0.1),
        nn.Maxout(lambda: nn.Dense(8, 12), 2), nn.VariationalHiddenDropout(0.2),
        nn.ReshapeLayer((3, 4)), nn.AlternatePrecision(jnp.bfloat16, nn.Dense(4, 4)),
        nn.SelectDim(1, range(2)), nn.FlattenLayer(N=2), nn.NoOpLayer(), nn.Dense(8, 1))


def _misc_data():
    return (jnp.asarray(_rand(20, 5, 6)), jnp.asarray(_rand(21, 5, 1)))


def _steps(backend, ts, n, **kw):
    losses = []
    for _ in range(n):
        _, loss, _, ts = single_train_step(backend, luxc.MSELoss(), _misc_data(), ts, **kw)
        losses.append(float(loss))
    return losses, ts


def test_misc_layers_compiled_equals_eager_bf16_checkpoint_and_artifact(tmp_path):
    ps, st = luxc.setup(0, _misc_model())
    fresh = luxc.TrainState(_misc_model(), ps, st, optax.adam(1e-2))
    eager, ts_e = _steps(luxc.AutoJAX(), fresh, 3)
    compiled, ts_c = _steps(luxc.AutoXLA(), fresh, 3)  # the mask appears: one recompile
    np.testing.assert_allclose(eager, compiled, rtol=1e-5)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5),
                 (ts_e.parameters, ts_e.states), (ts_c.parameters, ts_c.states))
    assert eager[-1] < eager[0]
    bf16, _ = _steps(luxc.AutoXLA(), ts_c, 1,
                     compile_options=luxc.CompileOptions(mixed_precision="bf16"))
    luxc.save_state(tmp_path / "c.safetensors", ts_c)
    resumed = luxc.load_state(tmp_path / "c.safetensors", like=ts_e)
    a, b = _steps(luxc.AutoXLA(), ts_c, 1), _steps(luxc.AutoXLA(), resumed, 1)
    assert a[0] == b[0]
    # bf16 keeps 8 bits of mantissa: the same step's loss within a few bf16 ulps of float32's
    np.testing.assert_allclose(bf16[0], a[0][0], rtol=2e-2)
    # An artifact exported once the dropout mask exists (its state no longer changes shape)
    # trains like eager AutoJAX, in a process-independent loaded step.
    luxc.export_step(luxc.MSELoss(), _misc_data(), ts_e, tmp_path / "m.luxc")
    losses = luxc.load(tmp_path / "m.luxc").run(2)
    np.testing.assert_allclose(losses, _steps(luxc.AutoJAX(), ts_e, 2)[0], rtol=1e-5)


def test_misc_layers_inside_a_stack_equal_the_slices_applied_in_turn():
    from tests.nn.test_normalization import _stack_equals_slices_in_turn

    block = nn.Chain(nn.Scale(8, jnp.tanh), nn.AlphaDropout(0.1), nn.VariationalHiddenDropout(0.1),
                     nn.Maxout(lambda: nn.Dense(8, 8), 2), nn.Bilinear(8, 8, jnp.tanh),
                     nn.AlternatePrecision(jnp.float32, nn.NoOpLayer()), nn.ReshapeLayer((2, 4)),
                     nn.FlattenLayer(N=2), nn.SelectDim(0, range(4)))
    _stack_equals_slices_in_turn(block, jnp.asarray(_rand(30, 4, 8)))


@pytest.mark.parametrize("make,message", [
    (lambda: nn.Bilinear((3, 0), 2), r"Bilinear: expects \(in1, in2\) or in12, then out"),
    (lambda: nn.ReshapeLayer((-1, -1)), r"ReshapeLayer: dims must be non-negative ints \(at "
                                        r"most one -1\); received \(-1, -1\)"),
    (lambda: nn.SelectDim(1.5, 0), "SelectDim: dim must be an int axis; received 1.5"),
    (lambda: nn.SelectDim(1, "a"), "SelectDim: index must be an int or a sequence of ints"),
    (lambda: nn.FlattenLayer(N=-1), "FlattenLayer: N must be None or a non-negative int"),
    (lambda: nn.VariationalHiddenDropout(1.0), r"p must be in \[0, 1\); received 1.0"),
    (lambda: nn.Maxout(lambda: nn.Dense(2, 2), 0), r"Maxout: the \(constructor, n\) form needs"),
    (lambda: nn.Scale(3, jnp.tanh, activation=jnp.tanh), "Scale: activation given twice"),
])
def test_bad_configuration_is_one_line_naming_the_argument(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)
