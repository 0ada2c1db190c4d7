"""BatchNorm in training mode: its derivative, written by hand (``luxc/nn/_batch_statistics``),
against the closed form of Ioffe & Szegedy (2015, section 3) and against jax's derivative of the
formula as written; forward mode and second derivatives still work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxc
from luxc import nn
from luxc.nn._batch_statistics import _normalised, batch_normalise

EPS = 1e-5


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape) * 3.0 + 1.5)
    c = shape[-1]
    scale, bias = jnp.asarray(rng.random(c) + 0.5), jnp.asarray(rng.standard_normal(c))
    weights = jnp.asarray(rng.standard_normal(shape))
    return x, scale, bias, weights


@pytest.mark.parametrize("shape", [(16, 5), (4, 6, 6, 3), (2, 3, 3, 2, 4)])
def test_gradient_is_the_closed_form(shape):
    x, scale, bias, g = _inputs(shape)
    loss = lambda x, s, b: jnp.sum(g * batch_normalise(x, s, b, EPS)[0])  # noqa: E731
    dx, dscale, dbias = jax.grad(loss, argnums=(0, 1, 2))(x, scale, bias)

    # dL/dx = γ/(m σ) (m g − Σg − x̂ Σ g x̂), dL/dγ = Σ g x̂, dL/dβ = Σ g
    axes = tuple(range(len(shape) - 1))
    m = x.size // shape[-1]
    xn, g_np = np.asarray(x), np.asarray(g)
    mu, sigma = xn.mean(axis=axes), np.sqrt(xn.var(axis=axes) + EPS)
    xhat = (xn - mu) / sigma
    expected_dx = (np.asarray(scale) / (m * sigma)) * (
        m * g_np - g_np.sum(axis=axes) - xhat * (g_np * xhat).sum(axis=axes))
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dscale, (g_np * xhat).sum(axis=axes), rtol=1e-10)
    np.testing.assert_allclose(dbias, g_np.sum(axis=axes), rtol=1e-10)


def test_statistics_carry_their_own_derivatives():
    # μ and v are outputs too (the running statistics); their derivatives are those of the mean
    # and the biased variance as written.
    x, scale, bias, _ = _inputs((8, 4, 4, 3))

    def written(x):
        mean = jnp.mean(x, axis=(0, 1, 2))
        return jnp.sum(3.0 * mean + 2.0 * jnp.mean(jnp.square(x - mean), axis=(0, 1, 2)))

    def ours(x):
        _, mean, var = batch_normalise(x, scale, bias, EPS)
        return jnp.sum(3.0 * mean + 2.0 * var)

    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(written)(x), rtol=1e-10, atol=1e-14)


def test_forward_mode_and_second_derivatives():
    x, scale, bias, w = _inputs((6, 2, 2, 3), seed=1)
    tangent = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape))

    def loss(normalise):
        return lambda x: jnp.sum(w * jnp.tanh(normalise(x, scale, bias, EPS)[0]))

    ours, written = loss(batch_normalise), loss(_normalised)
    np.testing.assert_allclose(jax.jvp(ours, (x,), (tangent,))[1],
                               jax.jvp(written, (x,), (tangent,))[1], rtol=1e-10)
    hvp = lambda f: jax.jvp(jax.grad(f), (x,), (tangent,))[1]  # noqa: E731
    np.testing.assert_allclose(hvp(ours), hvp(written), rtol=1e-9, atol=1e-12)
    small = x[:2, :1, :1]
    np.testing.assert_allclose(
        jax.hessian(lambda v: jnp.sum(jnp.tanh(batch_normalise(v, scale, bias, EPS)[0])))(small),
        jax.hessian(lambda v: jnp.sum(jnp.tanh(_normalised(v, scale, bias, EPS)[0])))(small),
        rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_gradients_match_the_formula_as_written(affine):
    layer = nn.BatchNorm(3, jax.nn.relu, affine=affine)
    ps, st = luxc.setup(jax.random.key(0), layer)
    x, scale, bias, w = _inputs((5, 4, 4, 3), seed=3)
    if affine:
        ps = {"scale": scale, "bias": bias}

    def written(x, ps):
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        y = (x - mean) / jnp.sqrt(var + layer.epsilon)
        y = y * ps["scale"] + ps["bias"] if affine else y
        return jnp.sum(w * jax.nn.relu(y))

    ours = lambda x, ps: jnp.sum(w * layer(x, ps, st)[0])  # noqa: E731
    got, want = jax.grad(ours, (0, 1))(x, ps), jax.grad(written, (0, 1))(x, ps)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13), got, want)
    _, new_st = layer(x, ps, st)  # the running statistics: Lux's update, unbiased variance
    m = x.size // 3
    np.testing.assert_allclose(new_st["running_var"],
                               0.9 + 0.1 * np.var(np.asarray(x), axis=(0, 1, 2)) * m / (m - 1))


def test_backward_reads_the_activation_fewer_times():
    # What the hand-written derivative is for: XLA's own count of the bytes the compiled
    # gradient reads and writes (a conv-shaped activation; the formula as written: 39.9 MB
    # against 31.5 MB).
    with jax.enable_x64(False):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.random((64, 16, 16, 32), np.float32))
        w = jnp.asarray(rng.random(x.shape, np.float32))
        s, b = jnp.ones(32), jnp.zeros(32)

        def bytes_accessed(normalise):
            loss = lambda x, s, b: jnp.sum(w * jax.nn.relu(normalise(x, s, b, EPS)[0]))  # noqa: E731
            compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, s, b).compile()
            cost = compiled.cost_analysis()
            return (cost[0] if isinstance(cost, list) else cost)["bytes accessed"]

        assert bytes_accessed(batch_normalise) < 0.85 * bytes_accessed(_normalised)


def test_integer_input_is_normalised_without_a_derivative_rule():
    y, mean, var = batch_normalise(jnp.arange(12).reshape(6, 2), jnp.ones(2), jnp.zeros(2), EPS)
    np.testing.assert_allclose(mean, [5.0, 6.0])
    np.testing.assert_allclose(var, [35 / 3, 35 / 3])
    assert y.shape == (6, 2)
