"""Losses against independent references, their identities and their numerical care."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import luxc

RNG = np.random.default_rng(0)
PRED = RNG.uniform(0.05, 0.95, (6, 4)).astype(np.float32)
TARGET = RNG.uniform(0.05, 0.95, (6, 4)).astype(np.float32)
LOGITS = RNG.normal(size=(6, 4)).astype(np.float32)
LABELS = np.eye(4, dtype=np.float32)[RNG.integers(0, 4, 6)]


def test_regression_losses_match_numpy():
    d = PRED - TARGET
    assert float(luxc.MSELoss()(PRED, TARGET)) == pytest.approx(np.mean(d**2), rel=1e-6)
    assert float(luxc.MAELoss(agg="sum")(PRED, TARGET)) == pytest.approx(np.sum(np.abs(d)), rel=1e-6)
    huber = np.where(np.abs(d) <= 0.1, 0.5 * d**2, 0.1 * (np.abs(d) - 0.05))
    assert float(luxc.HuberLoss(delta=0.1)(PRED, TARGET)) == pytest.approx(huber.mean(), rel=1e-5)


def test_cross_entropy_on_logits_matches_optax():
    ours = luxc.CrossEntropyLoss(logits=True, agg=None)(LOGITS, LABELS)
    ref = optax.softmax_cross_entropy(LOGITS, LABELS)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_binary_cross_entropy_on_logits_matches_optax():
    y = (TARGET > 0.5).astype(np.float32)
    ours = luxc.BinaryCrossEntropyLoss(logits=True, agg=None)(LOGITS, y)
    np.testing.assert_allclose(ours, optax.sigmoid_binary_cross_entropy(LOGITS, y), rtol=1e-5)


def test_kl_divergence_matches_optax():
    p = jax.nn.softmax(LOGITS)
    q = np.asarray(jax.nn.softmax(LOGITS[::-1]))
    ours = luxc.KLDivergenceLoss(agg=None, epsilon=0)(p, q)
    np.testing.assert_allclose(ours, optax.kl_divergence(jnp.log(p), q), rtol=1e-5, atol=1e-7)


def test_hinge_loss_matches_optax():
    y = np.sign(TARGET - 0.5)
    np.testing.assert_allclose(luxc.HingeLoss(agg=None)(LOGITS, y), optax.hinge_loss(LOGITS, y),
                               rtol=1e-6)


def test_dice_is_per_sample_over_non_batch_axes():
    ours = luxc.DiceCoeffLoss(agg=None)(PRED, TARGET)
    ref = 1 - (2 * (PRED * TARGET).sum(1) + 1) / ((PRED**2).sum(1) + (TARGET**2).sum(1) + 1)
    assert ours.shape == (6,)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_cross_entropy_dims_selects_the_class_axis():
    last = luxc.CrossEntropyLoss(logits=True, agg=None)(LOGITS, LABELS)
    first = luxc.CrossEntropyLoss(logits=True, agg=None, dims=0)(LOGITS.T, LABELS.T)
    np.testing.assert_allclose(last, first, rtol=1e-6)


@pytest.mark.parametrize("agg,expected", [("mean", np.mean), ("sum", np.sum),
                                          (None, lambda x: x), (np.max, np.max)])
def test_agg_accepts_mean_sum_none_and_callables(agg, expected):
    np.testing.assert_allclose(luxc.MSELoss(agg=agg)(PRED, TARGET), expected((PRED - TARGET) ** 2),
                               rtol=1e-6)


def test_invalid_agg_is_a_value_error():
    with pytest.raises(ValueError, match="agg must be 'mean', 'sum', None or a callable"):
        luxc.MSELoss(agg="median")


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"prediction shape \(6, 4\) and target shape \(4, 6\)"):
        luxc.MSELoss()(PRED, TARGET.T)


def test_label_smoothing_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        luxc.CrossEntropyLoss(label_smoothing=1.5)


def test_objective_form_returns_loss_state_and_empty_stats(key):
    model = luxc.nn.Dense(4, 4)
    ps, st = luxc.setup(key, model)
    loss, st2, stats = luxc.MSELoss()(model, ps, st, (PRED, TARGET))
    y_pred, _ = model(PRED, ps, st)
    assert float(loss) == pytest.approx(float(luxc.MSELoss()(y_pred, TARGET)))
    assert st2 == st and stats == {}


def test_wrong_number_of_arguments_is_a_type_error():
    with pytest.raises(TypeError, match=r"takes \(y_pred, y\) or \(model, ps, st, \(x, y\)\)"):
        luxc.MSELoss()(PRED)


@pytest.mark.parametrize("loss", [luxc.MSELoss(), luxc.CrossEntropyLoss(logits=True),
                                  luxc.DiceCoeffLoss(), luxc.BinaryCrossEntropyLoss(),
                                  luxc.KLDivergenceLoss(), luxc.FocalLoss()])
def test_no_gradient_reaches_the_target(loss):
    g = jax.grad(lambda y: loss(jnp.asarray(PRED), y))(jnp.asarray(TARGET))
    assert np.all(np.asarray(g) == 0)


def test_integer_and_boolean_targets_work():
    y_int = (TARGET > 0.5).astype(np.int32)
    a = luxc.BinaryCrossEntropyLoss()(PRED, y_int)
    b = luxc.BinaryCrossEntropyLoss()(PRED, y_int.astype(bool))
    c = luxc.BinaryCrossEntropyLoss()(PRED, y_int.astype(np.float32))
    assert float(a) == float(b) == float(c)


HUGE_LOGITS = np.array([[1e4, -1e4, 0.0, 5e3], [-1e4, 1e4, -5e3, 0.0]])
HUGE_TARGETS = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(z / 2))  # no overflow at |z| = 1e4


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# Closed forms on logits z and targets y, in float64 (the stable forms, so they hold at 1e4):
# binary cross-entropy log(1 + e^z) - y z, mean over all elements, gradient (sigmoid(z) - y) / N;
# cross-entropy logsumexp(z) - sum(y z) per row, mean over rows, gradient (softmax(z) - y) / rows.
_HUGE_LOGIT_CASES = {
    "binary": (luxc.BinaryCrossEntropyLoss(logits=True),
               np.mean(np.logaddexp(0, HUGE_LOGITS) - HUGE_TARGETS * HUGE_LOGITS),
               (_sigmoid(HUGE_LOGITS) - HUGE_TARGETS) / HUGE_LOGITS.size),
    "categorical": (luxc.CrossEntropyLoss(logits=True),
                    np.mean(np.logaddexp.reduce(HUGE_LOGITS, axis=-1)
                            - (HUGE_TARGETS * HUGE_LOGITS).sum(-1)),
                    (_softmax(HUGE_LOGITS) - HUGE_TARGETS) / len(HUGE_LOGITS)),
}


@pytest.mark.parametrize("case", sorted(_HUGE_LOGIT_CASES))
def test_logit_paths_give_the_closed_form_for_huge_logits(case):
    loss, value_expected, grad_expected = _HUGE_LOGIT_CASES[case]
    value, grad = jax.value_and_grad(lambda z: loss(z, jnp.asarray(HUGE_TARGETS, jnp.float32)))(
        jnp.asarray(HUGE_LOGITS, jnp.float32))
    np.testing.assert_allclose(float(value), value_expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), grad_expected, rtol=1e-6, atol=1e-7)


# float16 and bfloat16 keep 11 and 8 significant bits: the low-precision result is the float32
# one (itself checked against numpy above) to within a few units of the dtype's rounding.
_ROUNDING = {jnp.float16: 2.0 ** -10, ml_dtypes.bfloat16: 2.0 ** -7}


@pytest.mark.parametrize("dtype", [jnp.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("loss", [luxc.MSELoss(), luxc.CrossEntropyLoss(),
                                  luxc.BinaryCrossEntropyLoss(logits=True), luxc.DiceCoeffLoss(),
                                  luxc.MSLELoss(), luxc.PoissonLoss()])
def test_low_precision_inputs_give_low_precision_results(loss, dtype):
    out = loss(jnp.asarray(PRED, dtype), jnp.asarray(TARGET, dtype))
    pred, target = (np.asarray(jnp.asarray(a, dtype), np.float32) for a in (PRED, TARGET))
    reference = float(loss(pred, target))  # the same rounded inputs, computed in float32
    assert out.dtype == dtype
    np.testing.assert_allclose(float(out), reference, rtol=8 * _ROUNDING[dtype],
                               atol=8 * _ROUNDING[dtype])


@pytest.mark.parametrize("loss", [luxc.MSELoss(), luxc.MAELoss(), luxc.HuberLoss(),
                                  luxc.MSLELoss(), luxc.DiceCoeffLoss(), luxc.PoissonLoss(),
                                  luxc.BinaryCrossEntropyLoss(), luxc.CrossEntropyLoss(),
                                  luxc.KLDivergenceLoss(), luxc.FocalLoss(), luxc.BinaryFocalLoss()])
@pytest.mark.parametrize("edge", ["zero", "one", "equal"])
def test_gradients_at_edge_cases_are_finite(loss, edge):
    y = jnp.asarray(TARGET)
    y_pred = {"zero": jnp.zeros_like(y), "one": jnp.ones_like(y), "equal": y}[edge]
    g = jax.grad(lambda p: loss(p, y))(y_pred)
    assert np.all(np.isfinite(g))


# The distance losses' gradients in closed form, mean over the N elements: MSE 2 (p - y) / N,
# MAE sign(p - y) / N (0 at p = y, as jnp.sign and Lux's abs' subgradient), Huber (delta 1,
# |p - y| < 1 here) (p - y) / N, MSLE 2 (log(p + eps) - log(y + eps)) / ((p + eps) N).
_DISTANCE_GRADIENTS = {
    "mse": (luxc.MSELoss(), lambda p, y: 2 * (p - y) / p.size),
    "mae": (luxc.MAELoss(), lambda p, y: np.sign(p - y) / p.size),
    "huber": (luxc.HuberLoss(), lambda p, y: (p - y) / p.size),
    "msle": (luxc.MSLELoss(epsilon=1e-3),
             lambda p, y: 2 * (np.log(p + 1e-3) - np.log(y + 1e-3)) / ((p + 1e-3) * p.size)),
}


@pytest.mark.parametrize("name", sorted(_DISTANCE_GRADIENTS))
@pytest.mark.parametrize("edge", ["zero", "one", "equal"])
def test_distance_loss_gradients_at_edge_cases_are_the_closed_form(name, edge):
    loss, closed_form = _DISTANCE_GRADIENTS[name]
    y = TARGET.astype(np.float64)
    p = {"zero": np.zeros_like(y), "one": np.ones_like(y), "equal": y}[edge]
    g = jax.grad(lambda q: loss(q, jnp.asarray(TARGET)))(jnp.asarray(p, jnp.float32))
    np.testing.assert_allclose(np.asarray(g), closed_form(p, y), rtol=1e-5, atol=1e-9)
    if edge == "equal":
        assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("loss", [luxc.MSELoss(), luxc.HuberLoss(delta=0.2), luxc.MSLELoss(),
                                  luxc.DiceCoeffLoss(), luxc.PoissonLoss(),
                                  luxc.BinaryCrossEntropyLoss(), luxc.CrossEntropyLoss(),
                                  luxc.KLDivergenceLoss(), luxc.FocalLoss(), luxc.BinaryFocalLoss(),
                                  luxc.SiameseContrastiveLoss(), luxc.SquaredHingeLoss()])
def test_gradient_matches_finite_differences(loss):
    p = np.asarray(PRED, np.float64)
    y = np.asarray(TARGET)
    f = lambda q: float(loss(jnp.asarray(q, jnp.float32), y))
    g = np.asarray(jax.grad(lambda q: loss(q, y))(jnp.asarray(PRED)))
    direction = RNG.normal(size=p.shape)
    h = 1e-2 * 0.05
    fd = (f(p + h * direction) - f(p - h * direction)) / (2 * h)
    assert float(np.sum(g * direction)) == pytest.approx(fd, rel=2e-2, abs=2e-4)


finite = st.floats(0.0625, 0.9375, width=32)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (3, 4), elements=finite), arrays(np.float32, (3, 4), elements=finite))
def test_sum_is_batch_size_times_mean(p, y):
    for loss in (luxc.MSELoss, luxc.BinaryCrossEntropyLoss, luxc.MAELoss):
        assert float(loss(agg="sum")(p, y)) == pytest.approx(p.size * float(loss()(p, y)), rel=1e-4)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (3, 4), elements=finite), st.floats(1e-7, 1e-3))
def test_epsilon_only_shifts_the_log_argument(p, eps):
    y = np.eye(4, dtype=np.float32)[[0, 2, 3]]
    ours = luxc.CrossEntropyLoss(epsilon=eps, agg=None)(p, y)
    ref = -np.sum(y * np.log(p.astype(np.float64) + eps), axis=-1)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (3, 4), elements=st.floats(-5.0, 5.0, width=32)), st.floats(0, 1))
def test_label_smoothing_equals_smoothed_targets(z, alpha):
    y = np.eye(4, dtype=np.float32)[[1, 0, 3]]
    smoothed = y * (1 - alpha) + alpha / 4
    a = luxc.CrossEntropyLoss(logits=True, label_smoothing=alpha)(z, y)
    b = luxc.CrossEntropyLoss(logits=True)(z, smoothed)
    assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (5,), elements=st.floats(-8.0, 8.0, width=32)))
def test_logit_and_probability_bce_agree(z):
    y = np.array([1, 0, 1, 1, 0], np.float32)
    a = luxc.BinaryCrossEntropyLoss(logits=True)(z, y)
    b = luxc.BinaryCrossEntropyLoss(epsilon=0)(jax.nn.sigmoid(z.astype(np.float64)), y)
    assert float(a) == pytest.approx(float(b), rel=1e-3, abs=1e-5)
