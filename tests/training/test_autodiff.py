"""Lux's autodiff helpers (Lux.jl ``src/autodiff/api.jl``, ``test/autodiff/``): products and
batched Jacobians against jax and closed forms, Lux's backend rules, nested AD in a compiled
objective."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import compute_gradients
from tests.passes._inputs import normal

X = normal(0, (4, 3))
U = normal(1, (4, 3))


def _f(x):
    return jnp.sin(x) * x ** 2


@pytest.mark.parametrize("ad", [luxc.AutoForwardDiff(), luxc.AutoXLA()], ids=repr)
def test_jacobian_vector_product_is_the_directional_derivative(ad):
    got = luxc.jacobian_vector_product(_f, ad, X, U)
    closed = (jnp.cos(X) * X ** 2 + 2 * X * jnp.sin(X)) * U  # f is elementwise
    np.testing.assert_allclose(got, closed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, jax.jvp(_f, (X,), (U,))[1], rtol=1e-6)


@pytest.mark.parametrize("ad", [luxc.AutoJAX(), luxc.AutoXLA()], ids=repr)
def test_vector_jacobian_product_is_the_transposed_jacobian_times_u(ad):
    a = normal(2, (5, 3))
    f = lambda x: x @ a.T  # noqa: E731  (4, 3) -> (4, 5)
    u = normal(3, (4, 5))
    got = luxc.vector_jacobian_product(f, ad, X, u)
    np.testing.assert_allclose(got, u @ a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, jax.vjp(f, X)[1](u)[0], rtol=1e-6)


def test_the_products_are_adjoint():
    # <J u, w> == <u, Jᵀ w>
    w = normal(4, X.shape)
    jvp = luxc.jacobian_vector_product(_f, luxc.AutoForwardDiff(), X, U)
    vjp = luxc.vector_jacobian_product(_f, luxc.AutoJAX(), X, w)
    assert float(jnp.vdot(jvp, w)) == pytest.approx(float(jnp.vdot(U, vjp)), rel=1e-5)


@pytest.mark.parametrize("ad", [luxc.AutoForwardDiff(), luxc.AutoJAX(), luxc.AutoXLA()], ids=repr)
def test_batched_jacobian_is_batch_out_in(ad):
    layer = nn.Dense(3, 2, jnp.tanh)
    ps, st = luxc.setup(jax.random.key(5), layer)
    f = luxc.StatefulLuxLayer(layer, ps, st)
    got = luxc.batched_jacobian(f, ad, X)
    assert got.shape == (4, 2, 3)
    # Dense + tanh: J_b = diag(1 - tanh²(W x_b + b)) W, W of shape (out, in) as Lux's
    pre = X @ ps["weight"].T + ps["bias"]
    closed = (1 - jnp.tanh(pre) ** 2)[:, :, None] * ps["weight"][None]
    np.testing.assert_allclose(got, closed, rtol=1e-5, atol=1e-6)
    per_sample = jax.vmap(jax.jacrev(lambda x: f(x[None])[0]))(X)
    np.testing.assert_allclose(got, per_sample, rtol=1e-5, atol=1e-6)


def test_batched_jacobian_flattens_the_non_batch_axes():
    x = normal(6, (2, 2, 3))
    f = lambda x: jnp.concatenate([x, x ** 2], axis=1)  # noqa: E731  (2, 2, 3) -> (2, 4, 3)
    got = luxc.batched_jacobian(f, luxc.AutoJAX(), x)
    assert got.shape == (2, 12, 6)
    full = jax.jacrev(f)(x)  # (2, 4, 3, 2, 2, 3)
    for b in range(2):
        np.testing.assert_allclose(got[b], full[b, :, :, b].reshape(12, 6), rtol=1e-6)


def test_backends_follow_luxs_tables():
    # api.jl: JVP for AutoForwardDiff/AutoEnzyme, VJP for AutoZygote/AutoEnzyme.
    with pytest.raises(ValueError, match="jacobian_vector_product is not implemented for "
                                         r"AutoJAX\(\).*luxc.AutoForwardDiff\(\) or luxc.AutoXLA"):
        luxc.jacobian_vector_product(_f, luxc.AutoZygote(), X, U)
    with pytest.raises(ValueError, match="vector_jacobian_product is not implemented for "
                                         r"AutoForwardDiff\(\)"):
        luxc.vector_jacobian_product(_f, luxc.AutoForwardDiff(), X, U)
    with pytest.raises(ValueError, match="batched_jacobian is not implemented for 'AD'"):
        luxc.batched_jacobian(_f, "AD", X)


def test_batched_jacobian_needs_a_batch_axis():
    with pytest.raises(ValueError, match=r"x must be an array \(batch, features...\).*\(3,\)"):
        luxc.batched_jacobian(jnp.sin, luxc.AutoJAX(), jnp.ones(3))
    with pytest.raises(ValueError, match=r"f\(x\) must be .* batch size 4.*\(4,\)"):
        luxc.batched_jacobian(lambda x: x.sum(1), luxc.AutoJAX(), X)


def _jacobian_penalty(model, ps, st, x):
    # Lux's nested-AD pattern (docs "Nested Automatic Differentiation"): a loss of the
    # input-Jacobian, differentiated with respect to the parameters.
    smodel = luxc.StatefulLuxLayer(model, ps, st)
    jac = luxc.batched_jacobian(smodel, luxc.AutoForwardDiff(), x)
    vjp = luxc.vector_jacobian_product(smodel, luxc.AutoJAX(), x, jnp.ones((x.shape[0], 2)))
    return jnp.mean(jac ** 2) + jnp.mean(vjp ** 2), smodel.st, {}


def test_nested_ad_inside_a_compiled_objective_equals_eager_and_the_closed_form():
    model = nn.Dense(3, 2, jnp.tanh)
    ps, st = luxc.setup(jax.random.key(7), model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    g_xla, loss_xla, _, _ = compute_gradients(luxc.AutoXLA(), _jacobian_penalty, X, ts)
    g_jax, loss_jax, _, _ = compute_gradients(luxc.AutoJAX(), _jacobian_penalty, X, ts)

    def closed(p):
        d = 1 - jnp.tanh(X @ p["weight"].T + p["bias"]) ** 2  # (batch, out)
        jac = d[:, :, None] * p["weight"][None]
        return jnp.mean(jac ** 2) + jnp.mean((d @ p["weight"]) ** 2)

    assert float(loss_xla) == pytest.approx(float(closed(ps)), rel=1e-5)
    assert float(loss_jax) == pytest.approx(float(closed(ps)), rel=1e-5)
    for a, b, c in zip(jax.tree.leaves(g_xla), jax.tree.leaves(g_jax),
                       jax.tree.leaves(jax.grad(closed)(ps))):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-4, atol=1e-6)
