"""FLOPs per HLO instruction counted from the optimised HLO (``luxc profile --ops``'s FLOPs
column on CPU, whose trace events carry none), against closed-form counts."""

import jax
import jax.numpy as jnp
import optax
import pytest
from jax import lax

import luxc
from luxc import nn
from luxc.runtime.performance._hlo_flops import instruction_flops


def _hlo(fn, *args, **options):
    return jax.jit(fn).lower(*args).compile(options or None).as_text()


@pytest.mark.parametrize("ynn", ["", None])  # a plain dot, and a dot inside a YNNPACK fusion
def test_a_dense_layers_dot_is_2_b_in_out(ynn):
    b, n_in, n_out = 32, 48, 24
    options = {} if ynn is None else {"xla_cpu_experimental_ynn_fusion_type": ynn}
    counts = instruction_flops(_hlo(lambda x, w: x @ w, jnp.ones((b, n_in)), jnp.ones((n_in, n_out)),
                                    **options))
    assert sum(counts.values()) == 2 * b * n_in * n_out


def test_a_batched_dot_is_2_batch_m_n_k():
    g, m, k, n = 3, 5, 7, 11
    counts = instruction_flops(_hlo(lambda a, c: jnp.einsum("gmk,gkn->gmn", a, c),
                                    jnp.ones((g, m, k)), jnp.ones((g, k, n))))
    assert sum(counts.values()) == 2 * g * m * n * k


@pytest.mark.parametrize("groups", [1, 2])
def test_a_convolution_is_2_output_window_input_features(groups):
    n, c, h, w, o, kh, kw = 4, 4, 12, 10, 6, 3, 5
    x, kernel = jnp.ones((n, c, h, w)), jnp.ones((o, c // groups, kh, kw))
    counts = instruction_flops(_hlo(
        lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "VALID", feature_group_count=groups),
        x, kernel, xla_cpu_experimental_ynn_fusion_type=""))
    ho, wo = h - kh + 1, w - kw + 1
    assert sum(counts.values()) == 2 * n * ho * wo * o * kh * kw * (c // groups)


def test_an_elementwise_fusion_counts_one_flop_per_element_and_op():
    x = jnp.ones((8, 3))
    counts = instruction_flops(_hlo(lambda x: jnp.sum(jnp.tanh(x) * 2 + 1), x))
    # tanh, multiply, add: 3 per element; the sum: one per input element
    assert sum(counts.values()) == 3 * x.size + x.size


def test_a_2x2_max_pool_is_4_per_output_element():
    x = jnp.ones((2, 8, 6, 3))
    counts = instruction_flops(_hlo(
        lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), x))
    assert sum(counts.values()) == 4 * (2 * 4 * 3 * 3)


def test_the_op_profile_has_flops_and_flops_per_second_for_the_dense_layer():
    model = nn.Dense(64, 32)
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    data = (jnp.ones((16, 64)), jnp.zeros((16, 32)))
    cs = luxc.compile_step(luxc.MSELoss(), data, ts)
    records = cs.profile(ts, data, steps=5)
    dots = [r for r in records if "dot" in r.kind]
    # forward x @ W and the weight gradient x^T @ g, 2*16*64*32 each (the data takes no gradient)
    assert sum(r.flops * r.count for r in dots) == pytest.approx(2 * 2 * 16 * 64 * 32)
    assert all(r.flops_per_second > 0 for r in dots)
    assert all(r.as_dict()["flops_per_second"] == r.flops_per_second for r in records)
