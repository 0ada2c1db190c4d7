"""Layers in the LuxCore style."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxc
from luxc import nn


def test_setup_is_deterministic_in_the_key(key):
    model = nn.Chain(nn.Dense(3, 4, jax.nn.relu), nn.Dense(4, 2))
    a, _ = luxc.setup(key, model)
    b, _ = luxc.setup(key, model)
    c, _ = luxc.setup(jax.random.key(1), model)
    assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.all(u == v)), a, b))
    assert not bool(jnp.all(a["layer_1"]["weight"] == c["layer_1"]["weight"]))


def test_dense_shapes_and_formula(key):
    layer = nn.Dense(3, 2, jax.nn.relu)
    ps, st = luxc.setup(key, layer)
    assert ps["weight"].shape == (2, 3) and ps["bias"].shape == (2,)
    x = jax.random.normal(key, (5, 3))
    y, st2 = layer(x, ps, st)
    np.testing.assert_allclose(y, jax.nn.relu(x @ ps["weight"].T + ps["bias"]), rtol=1e-6)
    assert st2 == {}


def test_dense_wrong_feature_count_names_layer_and_shapes(key):
    layer = nn.Dense(3, 2)
    ps, st = luxc.setup(key, layer)
    with pytest.raises(nn.LayerShapeError, match=r"Dense\(3 => 2\) expects 3 features.*\(4, 5\)"):
        layer(jnp.ones((4, 5)), ps, st)


def test_chain_error_names_the_failing_layer(key):
    model = nn.Chain(nn.Dense(3, 4), nn.Dense(5, 2))
    ps, st = luxc.setup(key, model)
    with pytest.raises(nn.LayerShapeError, match=r"Chain layer_2: Dense\(5 => 2\) expects 5"):
        model(jnp.ones((1, 3)), ps, st)


def test_conv_and_maxpool_shapes(key):
    model = nn.Chain(nn.Conv((5, 5), 1, 6, jax.nn.relu), nn.MaxPool((2, 2)),
                     nn.Conv((3, 3), 6, 4, pad="same"), nn.FlattenLayer(), nn.Dense(4 * 12 * 12, 10))
    ps, st = luxc.setup(key, model)
    assert ps["layer_1"]["weight"].shape == (5, 5, 1, 6)
    y, _ = model(jnp.ones((2, 28, 28, 1)), ps, st)
    assert y.shape == (2, 10)
    assert luxc.parameter_count(model) == 5 * 5 * 6 + 6 + 3 * 3 * 6 * 4 + 4 + 576 * 10 + 10


def test_conv_matches_a_direct_correlation(key):
    layer = nn.Conv((2,), 1, 1, use_bias=False, cross_correlation=True)
    ps, st = luxc.setup(key, layer)
    x = jnp.arange(5.0).reshape(1, 5, 1)
    y, _ = layer(x, ps, st)
    w = ps["weight"][:, 0, 0]
    np.testing.assert_allclose(y[0, :, 0], [w[0] * i + w[1] * (i + 1) for i in range(4)], rtol=1e-6)


def test_conv_is_a_true_convolution_by_default_as_lux(key):
    layer = nn.Conv((2,), 1, 1, use_bias=False)
    ps, st = luxc.setup(key, layer)
    x = jnp.arange(5.0).reshape(1, 5, 1)
    y, _ = layer(x, ps, st)
    w = ps["weight"][:, 0, 0]
    np.testing.assert_allclose(y[0, :, 0], [w[1] * i + w[0] * (i + 1) for i in range(4)], rtol=1e-6)


def test_conv_rejects_wrong_channels(key):
    layer = nn.Conv((3, 3), 3, 8)
    ps, st = luxc.setup(key, layer)
    with pytest.raises(nn.LayerShapeError, match=r"expects 3 features.*\(1, 8, 8, 1\)"):
        layer(jnp.ones((1, 8, 8, 1)), ps, st)


def test_maxpool_takes_window_maxima():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    y, _ = nn.MaxPool((2, 2))(x, {}, {})
    np.testing.assert_array_equal(y[0, :, :, 0], [[5.0, 7.0], [13.0, 15.0]])


def test_maxpool_gradient_reaches_only_the_maxima():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    g = jax.grad(lambda x: jnp.sum(nn.MaxPool((2, 2))(x, {}, {})[0]))(x)
    expected = np.zeros(16)
    expected[[5, 7, 13, 15]] = 1.0
    np.testing.assert_array_equal(g.ravel(), expected)


def test_batchnorm_normalises_and_updates_running_stats(key):
    layer = nn.BatchNorm(3, momentum=0.1)
    ps, st = luxc.setup(key, layer)
    x = jax.random.normal(key, (64, 3)) * 2.0 + 5.0
    y, st2 = layer(x, ps, st)
    np.testing.assert_allclose(jnp.mean(y, 0), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, 0), 1.0, atol=1e-3)
    np.testing.assert_allclose(st2["running_mean"], 0.1 * jnp.mean(x, 0), rtol=1e-5)
    np.testing.assert_allclose(st2["running_var"], 0.9 + 0.1 * jnp.var(x, 0, ddof=1), rtol=1e-5)


def test_batchnorm_in_test_mode_uses_and_keeps_running_stats(key):
    layer = nn.BatchNorm(3)
    ps, st = luxc.setup(key, layer)
    st = {**st, "running_mean": jnp.array([1.0, 2.0, 3.0]), "running_var": jnp.full(3, 4.0)}
    st_test = luxc.testmode(st)
    assert not st_test["training"]
    y, st2 = layer(jnp.array([[3.0, 2.0, 1.0]]), ps, st_test)
    np.testing.assert_allclose(y, [[1.0, 0.0, -1.0]], atol=1e-5)
    assert st2 is st_test
    assert luxc.trainmode(st_test)["training"]


def test_layernorm_normalises_each_sample(key):
    layer = nn.LayerNorm(4)
    ps, st = luxc.setup(key, layer)
    y, _ = layer(jax.random.normal(key, (3, 4)) * 3 + 1, ps, st)
    np.testing.assert_allclose(jnp.mean(y, -1), 0.0, atol=1e-5)
    with pytest.raises(nn.LayerShapeError, match=r"LayerNorm\(4\).*\(3, 5\)"):
        layer(jnp.ones((3, 5)), ps, st)


def test_dropout_is_deterministic_from_its_key_and_advances_it(key):
    layer = nn.Dropout(0.5)
    _, st = luxc.setup(key, layer)
    x = jnp.ones((100,))
    y1, st1 = layer(x, {}, st)
    y2, _ = layer(x, {}, st)
    y3, _ = layer(x, {}, st1)
    np.testing.assert_array_equal(y1, y2)
    assert not bool(jnp.all(y1 == y3))
    assert set(np.unique(np.asarray(y1)).tolist()) <= {0.0, 2.0}


def test_dropout_in_test_mode_is_the_identity(key):
    layer = nn.Dropout(0.9)
    _, st = luxc.setup(key, layer)
    x = jnp.arange(5.0)
    y, st2 = layer(x, {}, luxc.testmode(st))
    np.testing.assert_array_equal(y, x)


def test_dropout_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        nn.Dropout(1.0)


def test_wrapped_function_and_flatten(key):
    model = nn.Chain(nn.FlattenLayer(), lambda x: x * 2)
    ps, st = luxc.setup(key, model)
    y, _ = model(jnp.ones((2, 3, 4)), ps, st)
    assert y.shape == (2, 12) and float(y[0, 0]) == 2.0
    assert isinstance(model.layers[1], nn.WrappedFunction)


def test_chain_rejects_non_layers():
    with pytest.raises(TypeError, match="Chain: layer_2 must be a luxc layer or a callable; received int"):
        nn.Chain(nn.Dense(1, 1), 3)


def test_parameter_and_state_counts():
    # Lux.jl src/layers/containers.jl (Chain docstring): "Total: 23 parameters, plus 7 states"
    # (running mean and variance, 3 each, and the training flag: statelength(::Any) = 1).
    model = nn.Chain(nn.Dense(2, 3, jax.nn.relu), nn.BatchNorm(3), nn.Dense(3, 2))
    assert luxc.parameter_count(model) == 23
    assert luxc.state_count(model) == 7
    assert repr(model).endswith("plus 7 states.")
    # Dropout: the key data (uint32[2]) and the training flag.
    assert luxc.state_count(nn.Dropout(0.1)) == 2 + 1


def test_printing_is_lux_style():
    text = repr(nn.Chain(nn.Dense(2, 3, jax.nn.relu), nn.Dense(3, 1)))
    assert "layer_1 = Dense(2 => 3, relu),  # 9 parameters" in text
    assert "# Total: 13 parameters," in text and "plus 0 states." in text


def _seed_mlp():
    from luxc.examples.regression import make_model

    return make_model()


def test_compact_seed_mlp_has_49921_parameters(key):
    model = _seed_mlp()
    assert luxc.parameter_count(model) == 49_921
    ps, st = luxc.setup(key, model)
    y, _ = model(jnp.ones((32, 1)), ps, st)
    assert y.shape == (32, 1)


def test_compact_printing_shows_fields_body_and_totals():
    text = repr(_seed_mlp())
    assert text.startswith("@compact(")
    assert "w1 = Dense(1 => 128),  " in text and "# 256 parameters" in text
    assert "w2 = [Dense(128 => 128)] × 3," in text and "49_536 (16_512 x 3) parameters" in text
    assert "act = relu," in text
    assert ") do x" in text and "h = self.act(self.w1(x))" in text and "end" in text
    assert "# Total: 49_921 parameters," in text


def test_compact_arrays_are_parameters_and_name_replaces_printing(key):
    @luxc.compact(w=jnp.ones(3), name="Linear(3 => 1)")
    def linear(self, x):
        return jnp.sum(self.w * x)

    ps, st = luxc.setup(key, linear)
    assert float(linear(jnp.array([1.0, 2.0, 3.0]), ps, st)[0]) == 6.0
    assert repr(linear).startswith("Linear(3 => 1)") and "3 parameters" in repr(linear)


def test_compact_seed_dense_equivalence(key):
    @luxc.compact(W=jnp.ones((3, 5)), b=jnp.zeros(3), act=jax.nn.relu)
    def d(self, x):
        return self.act(x @ self.W.T + self.b)

    ps, st = luxc.setup(key, d)
    np.testing.assert_array_equal(d(jnp.ones((2, 5)), ps, st)[0], jnp.full((2, 3), 5.0))
    dense = nn.Dense(5, 3, jax.nn.relu)
    x = jnp.arange(1.0, 6.0)[None]
    np.testing.assert_allclose(d(x, ps, st)[0], dense(x, {"weight": ps["W"], "bias": ps["b"]}, {})[0])


def test_compact_init_fn_and_non_trainable(key):
    @luxc.compact(w=luxc.init_fn(lambda k: jax.random.normal(k, (3, 2))),
                  b=luxc.init_fn(lambda k: jax.random.normal(k, (3,)), "state"),
                  fixed=luxc.non_trainable(jnp.ones(3)))
    def r(self, x):
        return self.w @ x + self.b + self.fixed

    ps, st = luxc.setup(key, r)
    assert ps["w"].shape == (3, 2) and set(ps) == {"w"}
    assert st["b"].shape == (3,) and st["fixed"].shape == (3,)
    y, st2 = r(jnp.array([1.0, 2.0]), ps, st)
    assert y.shape == (3,) and st2["fixed"] is st["fixed"]


def test_compact_forward_with_parameters_and_dispatch(key):
    @luxc.compact(w=jnp.full(2, 3.0), dispatch="MyLinear")
    def f(self, x, p):
        return p["w"] * x

    ps, st = luxc.setup(key, f)
    assert f.dispatch == "MyLinear"
    np.testing.assert_array_equal(f(jnp.ones(2), ps, st)[0], [3.0, 3.0])


def test_compact_threads_sublayer_state(key):
    @luxc.compact(bn=nn.BatchNorm(2))
    def f(self, x):
        return self.bn(x)

    ps, st = luxc.setup(key, f)
    _, st2 = f(jnp.array([[1.0, 2.0], [3.0, 6.0]]), ps, st)
    np.testing.assert_allclose(st2["bn"]["running_mean"], [0.2, 0.4], rtol=1e-6)


def test_compact_reserved_names_and_bad_forward():
    with pytest.raises(TypeError, match="must take \\(self, x\\) or \\(self, x, p\\)"):
        luxc.compact(w=jnp.ones(1))(lambda x: x)


def test_stateful_lux_layer_keeps_state(key):
    model = nn.Chain(nn.Dense(2, 2), nn.BatchNorm(2))
    ps, st = luxc.setup(key, model)
    f = luxc.StatefulLuxLayer(model, ps, st)
    y = f(jnp.array([[1.0, 2.0], [3.0, 4.0]]))
    assert y.shape == (2, 2)
    assert not bool(jnp.all(f.st["layer_2"]["running_mean"] == 0))
    g = jax.grad(lambda p: jnp.sum(luxc.StatefulLuxLayer(model, ps, st)(jnp.ones((2, 2)), p)))(ps)
    assert g["layer_1"]["weight"].shape == (2, 2)


def test_setup_rejects_non_layers(key):
    with pytest.raises(TypeError, match="setup expects a luxc layer"):
        luxc.setup(key, lambda x: x)
