"""``@compact`` against Lux.jl's own source and tests (issue 11, item 1).

Reference values: Lux.jl ``src/helpers/compact.jl`` (docstrings, ``ValueStorage``) and
``test/misc/helpers/compact_tests.jl``; the seed ``lux-training-utilities.md`` (Compact Layer).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxc
from luxc import nn


def test_number_fields_are_state_and_updates_persist(key):
    # compact_tests.jl "Updated State": incr = 1; `incr *= 10` in the body;
    # st.incr == 1, then st_new.incr == 10, then 100.
    @luxc.compact(W=jnp.ones((7, 5)), b=jnp.zeros(7), incr=1)
    def scaled_dense(self, x):
        y = x @ self.W.T
        self.incr *= 10
        return jax.nn.relu(y + self.b) + self.incr

    ps, st = luxc.setup(key, scaled_dense)
    assert set(ps) == {"W", "b"} and st["incr"].value == 1
    x = jnp.ones((10, 5))
    _, st_new = scaled_dense(x, ps, st)
    assert st_new["incr"].value == 10
    y, st_new = jax.jit(scaled_dense)(x, ps, st_new)
    assert st_new["incr"].value == 100
    np.testing.assert_array_equal(y, jnp.full((10, 7), 5.0 + 100))


def test_traced_state_counter_with_non_trainable(key):
    @luxc.compact(count=luxc.non_trainable(0))
    def counter(self, x):
        self.count = self.count + 1
        return x

    ps, st = luxc.setup(key, counter)
    step = jax.jit(counter)
    for _ in range(3):
        _, st = step(jnp.ones(2), ps, st)
    assert int(st["count"]) == 3 and step._cache_size() == 1


def test_seed_dense_printout_counts_the_activation_as_one_state(key):
    # Seed (Compact Layer): @compact(W=ones(3, 5), b=zeros(3), act=relu) prints
    # "Total: 18 parameters," and "plus 1 states."; Lux's test has st.act == relu.
    @luxc.compact(W=jnp.ones((3, 5)), b=jnp.zeros(3), act=jax.nn.relu)
    def d(self, x):
        y = x @ self.W.T
        return self.act(y + self.b)

    text = repr(d)
    assert "# Total: 18 parameters," in text and text.endswith("plus 1 states.")
    assert "act = relu," in text
    ps, st = luxc.setup(key, d)
    assert st["act"].value is jax.nn.relu
    np.testing.assert_array_equal(d(jnp.ones((2, 5)), ps, st)[0], jnp.full((2, 3), 5.0))


def test_seed_mlp_printout_has_one_state():
    # Seed: the 49_921-parameter MLP with act=relu ends "plus 1 states."
    from luxc.examples.regression import make_model

    assert repr(make_model()).endswith("plus 1 states.")


def test_kwarg_values_count_as_states():
    # compact_tests.jl "kwarg printing": a=1, b=2, z=(a=3, v=1, k=3, w=2), c=4 -> "plus 7 states."
    @luxc.compact(a=1, b=2, z=dict(a=3, v=1, k=3, w=2), c=4)
    def f(self, x):
        return x + self.a + self.b

    assert luxc.state_count(f) == 7 and repr(f).endswith("plus 7 states.")
    assert "Total: 0 parameters," in repr(f)


def test_list_and_tuple_of_arrays_are_trained_parameters(key):
    # compact_tests.jl "Iterable Inputs": x = (w1, w2) or [w1, w2] -> ps.x[1] === w1 and
    # model(s) == w2 * (w1 * s).
    w1, w2 = jax.random.normal(key, (2, 4, 4))
    s = jnp.arange(8.0).reshape(2, 4)
    for x_list in ((w1, w2), [w1, w2]):
        @luxc.compact(x=x_list)
        def model(self, s):
            return s @ self.x[0].T @ self.x[1].T

        ps, st = luxc.setup(key, model)
        np.testing.assert_array_equal(ps["x"][0], w1)
        np.testing.assert_allclose(model(s, ps, st)[0], s @ w1.T @ w2.T, rtol=1e-5)
        grads = jax.grad(lambda p, m=model, st=st: jnp.sum(m(s, p, st)[0]))(ps)
        assert all(float(jnp.abs(g).sum()) > 0 for g in grads["x"])
        assert luxc.parameter_count(model) == 32


def test_dict_of_layers_is_a_set_of_sublayers(key):
    @luxc.compact(blocks={"enc": nn.Dense(3, 2), "dec": nn.Dense(2, 3)})
    def ae(self, x):
        return self.blocks["dec"](self.blocks["enc"](x))

    ps, st = luxc.setup(key, ae)
    assert ps["blocks"]["enc"]["weight"].shape == (2, 3)
    assert ps["blocks"]["dec"]["weight"].shape == (3, 2)
    x = jnp.ones((4, 3))
    enc, dec = ps["blocks"]["enc"], ps["blocks"]["dec"]
    expected = (x @ enc["weight"].T + enc["bias"]) @ dec["weight"].T + dec["bias"]
    np.testing.assert_allclose(ae(x, ps, st)[0], expected, rtol=1e-6)
    assert luxc.parameter_count(ae) == 8 + 9


def test_container_mixing_layers_and_values_is_an_error():
    # compact_tests.jl: x = (Dense(2 => 3), 1) throws "combines Lux layers with non-Lux layers".
    with pytest.raises(TypeError, match="field 'x' is a container mixing luxc layers with"):
        luxc.compact(x=(nn.Dense(2, 3), 1))(lambda self, y: y)
    with pytest.raises(TypeError, match="field 'w' is a container mixing arrays with"):
        luxc.compact(w=[jnp.ones(2), 3.0])(lambda self, y: y)


def test_assigning_a_parameter_field_is_an_error(key):
    @luxc.compact(w=jnp.ones(2))
    def f(self, x):
        self.w = self.w * 2
        return x

    ps, st = luxc.setup(key, f)
    with pytest.raises(AttributeError, match="cannot assign self.w: 'w' is a parameter"):
        f(jnp.ones(2), ps, st)


def test_one_line_def_prints_its_body():
    @luxc.compact(w=jnp.ones(3))
    def f(self, x): return self.w * x  # noqa: E704

    text = repr(f)
    assert ") do x\n    return self.w * x\nend" in text
