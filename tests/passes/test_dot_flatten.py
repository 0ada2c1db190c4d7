"""dot_flatten: golden StableHLO in → out, what it leaves alone, and the same values and
gradients as the unrewritten program (jax's own dot_general is the reference)."""

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
from tests.support import dot_module, run_pass_body


def _run(text: str) -> tuple[list[str], int]:
    return run_pass_body(text, "dot_flatten")



def test_a_weight_gradient_becomes_one_matrix_product_contracted_over_its_leading_axis():
    # dW = gᵀ x of a Dense layer on (batch 2, tokens 3): both operands contracted over (0, 1).
    body, rewrites = _run(dot_module("2x3x8xf32", "2x3x4xf32", "8x4xf32", "contracting_dims = [0, 1] x [0, 1]",
                                  ", precision = [DEFAULT, HIGHEST]"))
    assert rewrites == 1
    assert body == [
        "%0 = stablehlo.reshape %arg0 : (tensor<2x3x8xf32>) -> tensor<6x8xf32>",
        "%1 = stablehlo.reshape %arg1 : (tensor<2x3x4xf32>) -> tensor<6x4xf32>",
        "%2 = stablehlo.dot_general %0, %1, contracting_dims = [0] x [0], precision = [DEFAULT, HIGHEST] "
        ": (tensor<6x8xf32>, tensor<6x4xf32>) -> tensor<8x4xf32>",
        "return %2 : tensor<8x4xf32>",
    ]


def test_a_forward_dense_on_a_sequence_flattens_the_tokens_and_restores_them():
    body, rewrites = _run(dot_module("2x3x8xf32", "5x8xf32", "2x3x5xf32", "contracting_dims = [2] x [1]"))
    assert rewrites == 1
    assert body == [
        "%0 = stablehlo.reshape %arg0 : (tensor<2x3x8xf32>) -> tensor<6x8xf32>",
        "%1 = stablehlo.dot_general %0, %arg1, contracting_dims = [1] x [1] "
        ": (tensor<6x8xf32>, tensor<5x8xf32>) -> tensor<6x5xf32>",
        "%2 = stablehlo.reshape %1 : (tensor<6x5xf32>) -> tensor<2x3x5xf32>",
        "return %2 : tensor<2x3x5xf32>",
    ]


@pytest.mark.parametrize("lhs,rhs,out,dims", [
    ("6x8xf32", "8x4xf32", "6x4xf32", "contracting_dims = [1] x [0]"),  # already matrices
    ("2x3x8xf32", "2x8x4xf32", "2x3x4xf32",  # a batch axis: left to XLA's batched dot
     "batching_dims = [0] x [0], contracting_dims = [2] x [1]"),
    ("2x8x3xf32", "8x4xf32", "2x3x4xf32", "contracting_dims = [1] x [0]"),  # contracted in the middle
    ("2x3x8xf32", "3x2x4xf32", "8x4xf32", "contracting_dims = [0, 1] x [1, 0]"),  # crossed order
    ("2x3xf32", "2x3xf32", "f32", "contracting_dims = [0, 1] x [0, 1]"),  # a full contraction
])
def test_dots_it_cannot_flatten_are_left_alone(lhs, rhs, out, dims):
    _, rewrites = _run(dot_module(lhs, rhs, out, dims))
    assert rewrites == 0


def _dense_grads(x, w):
    def loss(x, w):  # a Dense layer on (batch, tokens, features), then a non-linearity
        return jnp.sum(jnp.tanh(jnp.matmul(x, w.T)))

    return jax.export.export(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))))(x, w)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_a_sequence_dense_gives_the_same_value_and_gradients(dtype):
    x = normal(1, (4, 5, 8), dtype)
    w = normal(0, (32, 8), dtype)
    exported = _dense_grads(x, w)
    new, (record,) = rewrite(exported, ["dot_flatten"])
    assert record.rewrites == 3  # forward, input gradient, weight gradient
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for a, b in zip(jax.tree.leaves(new.call(x, w)), jax.tree.leaves(exported.call(x, w))):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


def test_a_mixed_precision_dot_keeps_its_result_type():
    a = normal(0, (2, 3, 8), jnp.bfloat16)
    b = normal(1, (2, 3, 4), jnp.bfloat16)
    f = jax.jit(lambda a, b: lax.dot_general(a, b, (((0, 1), (0, 1)), ((), ())),
                                             preferred_element_type=jnp.float32))
    exported = jax.export.export(f)(a, b)
    new, (record,) = rewrite(exported, ["dot_flatten"])
    assert record.rewrites == 1
    out = new.call(a, b)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, exported.call(a, b), rtol=1e-5, atol=1e-5)


def test_a_compiled_sequence_model_step_equals_the_eager_step():
    """A two-layer model on (batch, tokens, features) through the CPU default pipeline: the same
    loss, gradients and updated parameters as AutoJAX (which runs no pass)."""
    model = nn.Chain(nn.LayerNorm(8), nn.Dense(8, 16, jax.nn.gelu), nn.Dense(16, 8))
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    data = (normal(1, (4, 6, 8)), normal(2, (4, 6, 8)))
    loss = luxc.MSELoss()
    cs = luxc.compile_step(loss, data, ts)
    assert dict((r.name, r.rewrites) for r in cs.pass_report)["dot_flatten"] == 6
    g1, l1, _, t1 = cs(ts, data)
    g0, l0, _, t0 = luxc.training.single_train_step(luxc.AutoJAX(), loss, data, ts)
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)
    for a, b in zip(jax.tree.leaves((g1, t1.parameters)), jax.tree.leaves((g0, t0.parameters))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
