"""FLOPs per HLO instruction counted from the optimised HLO (``luxc profile --ops``'s FLOPs
column on CPU, whose trace events carry none), against closed-form counts."""

import jax
import jax.numpy as jnp
import optax
import pytest
from jax import lax

import luxc
from luxc import nn
from luxc.runtime.performance._hlo_flops import instruction_flops, step_flops


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


def test_a_loops_body_counts_as_often_as_it_runs_where_xlas_cost_analysis_counts_it_once():
    b, n = 16, 32
    w = jnp.ones((n, n))

    def layers(x, depth):
        return lax.fori_loop(0, depth, lambda i, x: jnp.tanh(x @ w), x)

    def flops(depth):
        compiled = jax.jit(layers, static_argnums=1).lower(jnp.ones((b, n)), depth).compile()
        return step_flops(compiled.as_text()), compiled.cost_analysis()["flops"]

    per_layer = 2 * b * n * n + b * n + 2  # the dot, the tanh, the counter's add and compare
    (three, xla_three), (seven, xla_seven) = flops(3), flops(7)
    assert seven - three == 4 * per_layer
    assert xla_seven == xla_three  # XLA's own figure does not see the trip count


def test_a_loop_of_unknown_trip_count_gives_no_step_count():
    def until(x):
        return lax.while_loop(lambda x: jnp.sum(x) < 100.0, lambda x: x * 2.0, x)

    assert step_flops(_hlo(until, jnp.ones(4))) is None


def test_a_stacks_step_flops_grow_with_its_depth():
    def compiled(depth):
        model = nn.Stack(nn.Dense(8, 8, jnp.tanh), depth)
        ps, st = luxc.setup(0, model)
        ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
        data = (jnp.ones((4, 8)), jnp.ones((4, 8)))
        return luxc.compile_step(luxc.MSELoss(), data, ts)

    two, six = compiled(2), compiled(6)
    # each block: forward dot 2*4*8*8, two backward dots as many, tanh and its gradient
    assert six.step_flops() - two.step_flops() >= 4 * 3 * 2 * 4 * 8 * 8
    assert six.step_flops() > 2 * two.step_flops()


def test_an_exported_stacks_manifest_counts_every_block(tmp_path):
    import json

    def exported_flops(depth):
        model = nn.Stack(nn.Dense(8, 8, jnp.tanh), depth)
        ps, st = luxc.setup(0, model)
        ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
        out = tmp_path / f"stack{depth}.luxc"
        luxc.export_step(luxc.MSELoss(), (jnp.ones((4, 8)), jnp.ones((4, 8))), ts, out)
        return json.loads((out / "manifest.json").read_text())["flops"]

    two, six = exported_flops(2), exported_flops(6)
    assert six - two >= 4 * 3 * 2 * 4 * 8 * 8  # each block's three dots at least
