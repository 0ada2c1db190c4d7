"""Ops, losses and precision converters against Lux.jl's source (issue 11, items 2, 4, 6, 7, 8, 10).

References: Lux.jl ``src/extended_ops.jl``, ``src/helpers/losses.jl``,
``src/helpers/eltype_conversion.jl``, ``src/helpers/training.jl`` (adjust, item 7),
``test/misc/helpers/loss_tests.jl``; the seed
``lux-training-utilities.md`` (Loss Functions).
"""

import statistics

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import luxc
from luxc import ops

# Seed, CrossEntropyLoss example: softmax(reshape(-7:7, 3, 5)) against one-hot columns, laid
# out batch-first: CrossEntropyLoss()(ŷ, y) ≈ 1.6076053 and with agg=sum 5 × that.
SEED_Y_MODEL = jax.nn.softmax(jnp.arange(-7.0, 8.0).reshape(5, 3), axis=-1)
SEED_Y = jnp.eye(3)[jnp.array([0, 1, 2, 1, 0])]


def test_foldl_init_accumulator_takes_the_type_op_gives():
    # extended_ops.jl: foldl_init(op, x, init) = foldl(op, x; init); Julia's
    # foldl(+, [0.5, 0.5]; init=0) == 1.0.
    assert float(ops.foldl_init(jnp.add, jnp.array([0.5, 0.5]), 0)) == 1.0
    assert ops.foldl_init(lambda a, b: a + b, [0.5, 0.5], 0) == 1.0


def test_foldl_init_with_an_accumulator_that_grows():
    grow = lambda acc, x: jnp.concatenate([acc, x[None] * 2])  # noqa: E731
    out = ops.foldl_init(grow, jnp.array([1.0, 2.0, 3.0]), jnp.zeros(1))
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0, 6.0])
    g = jax.grad(lambda init: jnp.sum(ops.foldl_init(grow, jnp.array([1.0, 2.0]), init)))(
        jnp.ones(1))
    np.testing.assert_array_equal(g, [1.0])


def test_foldl_init_scans_a_stable_carry_and_differentiates_init():
    f = lambda init: ops.foldl_init(lambda c, x: c * x, jnp.array([2.0, 3.0, 4.0]), init)  # noqa: E731
    assert "scan" in str(jax.make_jaxpr(f)(1.0))
    assert float(f(1.0)) == 24.0 and float(jax.grad(f)(1.0)) == 24.0


@pytest.mark.parametrize("agg,expected", [(sum, 5 * 1.6076053), (statistics.mean, 1.6076053),
                                          (np.sum, 5 * 1.6076053), (jnp.mean, 1.6076053)])
def test_python_and_numpy_aggregations_reduce_the_whole_array(agg, expected):
    # Seed: CrossEntropyLoss()(ŷ, y) ≈ 1.6076053 and 5 * 1.6076053 ≈ CrossEntropyLoss(agg=sum).
    out = luxc.CrossEntropyLoss(agg=agg)(SEED_Y_MODEL, SEED_Y)
    assert out.shape == () and float(out) == pytest.approx(expected, rel=1e-5)


def test_builtin_max_aggregates_every_element():
    d = jnp.array([[0.1, 0.5], [0.3, 0.2]])
    assert float(luxc.MAELoss(agg=max)(d, jnp.zeros((2, 2)))) == pytest.approx(0.5)


def test_scalar_target_is_broadcast():
    # loss_tests.jl: bceloss([0.1, 0.2, 0.9], 1) ≈ -mean(log, [0.1, 0.2, 0.9]) (constant label).
    p = jnp.array([0.1, 0.2, 0.9])
    assert float(luxc.BinaryCrossEntropyLoss()(p, 1)) == pytest.approx(-np.log([0.1, 0.2, 0.9])
                                                                       .mean(), rel=1e-5)
    with pytest.raises(ValueError, match=r"prediction shape \(3,\) and target shape \(2,\)"):
        luxc.MSELoss()(p, jnp.ones(2))


def test_generic_loss_applies_a_scalar_function_element_wise():
    # Seed: GenericLossFunction((ŷ, y) -> abs2(ŷ - y))([1.1, 1.9, 3.1], 1:3) ≈ 0.01.
    yp, y = jnp.array([1.1, 1.9, 3.1]), jnp.array([1.0, 2.0, 3.0])
    cond = luxc.GenericLossFunction(
        lambda a, b: jax.lax.cond(a > b, lambda: (a - b) ** 2, lambda: (b - a) ** 2))
    assert float(cond(yp, y)) == pytest.approx(0.01, rel=1e-4)
    # Reduces its arguments, so it is not array-aware: applied per element pair.
    norm = luxc.GenericLossFunction(lambda a, b: jnp.sum(jnp.square(a - b)))
    assert float(norm(yp, y)) == pytest.approx(0.01, rel=1e-4)
    assert luxc.GenericLossFunction(lambda a, b: jnp.sum((a - b) ** 2), agg=None)(yp, y).shape \
        == (3,)


def test_generic_loss_explains_python_control_flow():
    loss = luxc.GenericLossFunction(lambda a, b: max(a - b, 0.0))
    with pytest.raises(TypeError, match="uses Python control flow .* jnp.where"):
        loss(jnp.ones(3), jnp.zeros(3))


def test_per_sample_losses_drop_the_class_axis():
    # Deliberate difference (README): Lux keeps the reduced axis as size 1.
    assert luxc.CrossEntropyLoss(agg=None)(SEED_Y_MODEL, SEED_Y).shape == (5,)


@pytest.mark.parametrize("diff", [jax.grad, jax.jacfwd])
def test_mae_gradient_is_zero_where_prediction_equals_target(diff):
    # losses.jl: derivative(l1_distance_loss, x, y) = sign(x - y), so 0 at ŷ == y.
    g = diff(lambda p: luxc.MAELoss(agg="sum")(p, jnp.array([1.0, 2.0, 3.0])))(
        jnp.array([1.0, 2.5, 2.0]))
    np.testing.assert_array_equal(g, [0.0, 1.0, -1.0])


@pytest.mark.parametrize("diff", [jax.grad, jax.jacfwd])
def test_cross_entropy_epsilon_zero_at_a_zero_prediction(diff):
    # extended_ops.jl: xlogy's rrule is zero where x == 0; loss_tests.jl:
    # iszero(CrossEntropyLoss(; epsilon=0)(y_same, ya)).
    y = jnp.array([[0.0, 1.0]])
    loss = lambda p: luxc.CrossEntropyLoss(epsilon=0)(p, y)  # noqa: E731
    assert float(loss(y)) == 0.0
    np.testing.assert_array_equal(diff(loss)(y), [[0.0, -1.0]])


def test_label_smoothing_with_a_tuple_of_class_axes():
    key = jax.random.key(1)
    p = jax.nn.softmax(jax.random.normal(key, (2, 12))).reshape(2, 3, 4)
    y = jnp.eye(12)[jnp.array([3, 7])].reshape(2, 3, 4)
    a = 0.1
    smoothed = np.asarray(y) * (1 - a) + a / 12  # seed: α / (size along the class axes)
    expected = np.mean(-np.sum(smoothed * np.log(np.asarray(p, np.float64)), axis=(1, 2)))
    out = luxc.CrossEntropyLoss(dims=(1, 2), label_smoothing=a, epsilon=0)(p, y)
    assert float(out) == pytest.approx(expected, rel=1e-5)


def test_converters_leave_numbers_alone_and_convert_complex_arrays():
    # eltype_conversion.jl: adapt_storage only touches arrays, floating ones to T and complex
    # ones to Complex{T}.
    out = luxc.f32({"c": np.ones(2, np.complex128), "s": 2.5, "n": 3})
    assert out["c"].dtype == jnp.complex64 and out["s"] == 2.5 and isinstance(out["s"], float)
    assert luxc.f16({"s": 2.5})["s"] == 2.5 and luxc.bf16({"s": 0.1})["s"] == 0.1
    for conv, dt in ((luxc.f16, "float16"), (luxc.bf16, "bfloat16")):
        with pytest.raises(TypeError, match=f"complex64 leaf has no {dt} complex counterpart"):
            conv({"c": jnp.ones(2, jnp.complex64)})
    assert luxc.bf16(jnp.ones(2)).dtype == ml_dtypes.bfloat16


def _adam_state(key):
    model = luxc.nn.Dense(2, 1)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    return luxc.TrainState(model, *luxc.setup(key, model), opt)


def _lr(ts):
    return pytest.approx(float(ts.optimizer_state.hyperparams["learning_rate"]), rel=1e-6)


def test_adjust_takes_the_learning_rate_positionally(key):
    # Lux.jl src/helpers/training.jl: Optimisers.adjust!(ts::TrainState, eta::Real) and
    # Optimisers.adjust(ts::TrainState, eta::Real).
    ts = _adam_state(key)
    assert _lr(luxc.training.adjust(ts, 1e-3)) == 1e-3 and _lr(ts) == 0.1
    assert luxc.training.adjust_(ts, 0.5) is ts and _lr(ts) == 0.5
    with pytest.raises(TypeError, match="given twice"):
        luxc.training.adjust(ts, 1e-3, learning_rate=1e-2)


def test_adjust_in_place_is_all_or_nothing(key):
    ts = _adam_state(key)
    earlier = ts.replace(step=3)  # shares the optimiser state
    with pytest.raises(ValueError, match="no hyperparameter 'momentum'"):
        luxc.training.adjust_(ts, 1e-3, b1=0.5, momentum=0.9)
    with pytest.raises(TypeError):
        luxc.training.adjust_(ts, b1=0.5, b2="fast")
    for t in (ts, earlier):
        assert _lr(t) == 0.1 and float(t.optimizer_state.hyperparams["b1"]) == pytest.approx(0.9)


def test_hinge_value_from_the_seed_and_the_true_gradient():
    # Seed: HingeLoss()([0.1, 0.3, 1, 1.5], [1, -1, 1, 1]) ≈ 0.55. Deliberate difference
    # (README): the gradient is the true -y where 1 - yŷ > 0 (Lux's derivative(l1_hinge_loss)
    # gives 1), and 0 at the kink yŷ == 1 as Lux's.
    p, y = jnp.array([0.1, 0.3, 1.0, 1.5]), jnp.array([1.0, -1.0, 1.0, 1.0])
    assert float(luxc.HingeLoss()(p, y)) == pytest.approx(0.55)
    np.testing.assert_array_equal(jax.grad(luxc.HingeLoss(agg="sum"))(p, y), [-1, 1, 0, 0])
