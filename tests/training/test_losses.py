"""Every loss once: against independent references (numpy formulas, optax, closed-form
gradients, finite differences), their identities and numerical care, and the values of Lux's
own docstrings and tests, in Python's batch-first layout.

References: Lux.jl ``src/helpers/losses.jl`` (docstrings), ``test/misc/helpers/loss_tests.jl``,
``src/extended_ops.jl`` (xlogy); the seed ``lux-training-utilities.md`` (Loss Functions).
Julia's ``(classes, batch)`` matrices are transposed to ``(batch, classes)``, and ``dims=1``
(Julia's class axis) becomes ``dims=-1``."""

import statistics

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
from tests.passes._inputs import normal

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


_EPS = float(np.finfo(np.float32).eps)  # the losses' default epsilon for float32


def _focal_grad(p, y, eps=_EPS):
    q = p + eps  # d/dq of -y (1 - q)^2 log q, per row (the class axis summed)
    return -y * (-2 * (1 - q) * np.log(q) + (1 - q) ** 2 / q) / len(p)


def _binary_focal_grad(p, y, eps=_EPS):
    q = p + eps
    pt = y * q + (1 - y) * (1 - q)  # d pt / dq = 2y - 1
    return (2 * (1 - pt) * np.log(pt) - (1 - pt) ** 2 / pt) * (2 * y - 1) / p.size


def _dice_grad(p, y):
    num = 2 * (p * y).sum(1, keepdims=True) + 1  # smooth 1, per row, mean over rows
    den = (p**2).sum(1, keepdims=True) + (y**2).sum(1, keepdims=True) + 1
    return -(2 * y * den - 2 * p * num) / den**2 / len(p)


# Every loss's gradient in closed form, at the edges a probability can reach (0, 1) and at the
# target, with epsilon = float32's eps where the loss has one. Element-wise losses are a mean
# over the N elements, class-axis losses a mean over the rows. MSE 2 (p - y) / N, MAE
# sign(p - y) / N (0 at p = y, as jnp.sign and Lux's abs' subgradient), Huber (delta 1,
# |p - y| < 1 here) (p - y) / N, MSLE 2 (log(p + eps) - log(y + eps)) / ((p + eps) N),
# BCE (-y / (p + eps) + (1 - y) / (1 - p + eps)) / N, Poisson (1 - y / (p + eps)) / N,
# cross-entropy (and KL, whose entropy term does not depend on p) -y / (p + eps) / rows.
_DISTANCE = {"mse", "mae", "huber", "msle"}
_EDGE_GRADIENTS = {
    "mse": (luxc.MSELoss(), lambda p, y: 2 * (p - y) / p.size),
    "mae": (luxc.MAELoss(), lambda p, y: np.sign(p - y) / p.size),
    "huber": (luxc.HuberLoss(), lambda p, y: (p - y) / p.size),
    "msle": (luxc.MSLELoss(epsilon=1e-3),
             lambda p, y: 2 * (np.log(p + 1e-3) - np.log(y + 1e-3)) / ((p + 1e-3) * p.size)),
    "bce": (luxc.BinaryCrossEntropyLoss(),
            lambda p, y: (-y / (p + _EPS) + (1 - y) / (1 - p + _EPS)) / p.size),
    "poisson": (luxc.PoissonLoss(), lambda p, y: (1 - y / (p + _EPS)) / p.size),
    "cross_entropy": (luxc.CrossEntropyLoss(), lambda p, y: -y / (p + _EPS) / len(p)),
    "kl": (luxc.KLDivergenceLoss(), lambda p, y: -y / (p + _EPS) / len(p)),
    "focal": (luxc.FocalLoss(), _focal_grad),
    "binary_focal": (luxc.BinaryFocalLoss(), _binary_focal_grad),
    "dice": (luxc.DiceCoeffLoss(), _dice_grad),
}


@pytest.mark.parametrize("name", sorted(_EDGE_GRADIENTS))
@pytest.mark.parametrize("edge", ["zero", "one", "equal"])
def test_loss_gradients_at_edge_cases_are_the_closed_form(name, edge):
    loss, closed_form = _EDGE_GRADIENTS[name]
    y = TARGET.astype(np.float64)
    p = {"zero": np.zeros_like(y), "one": np.ones_like(y), "equal": y}[edge]
    g = jax.grad(lambda q: loss(q, jnp.asarray(TARGET)))(jnp.asarray(p, jnp.float32))
    # atol: float32 rounds the O(1/N) terms that cancel at p = y to within a few eps / N (~5e-9).
    np.testing.assert_allclose(np.asarray(g), closed_form(p, y), rtol=1e-5, atol=2e-8)
    if edge == "equal" and name in _DISTANCE:
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


# ---------------------------------------------------------------- Lux's values


# y = [1 0 0 0 1; 0 1 0 1 0; 0 0 1 0 0] in Julia, transposed.
ONE_HOT = jnp.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
# softmax(reshape(-7:7, 3, 5)), transposed: each row is softmax([-7+3j, -6+3j, -5+3j]).
SOFTMAX = jax.nn.softmax(jnp.arange(-7.0, 8.0).reshape(5, 3), axis=-1)


def test_binary_cross_entropy_on_logits_and_probabilities():
    y_bin = jnp.array([True, False, True])
    y_model = jnp.array([2.0, -1.0, np.pi], jnp.float32)
    bce = luxc.BinaryCrossEntropyLoss()
    logitbce = luxc.BinaryCrossEntropyLoss(logits=True)
    assert float(logitbce(y_model, y_bin)) == pytest.approx(0.160832, rel=1e-5)
    assert float(bce(jax.nn.sigmoid(y_model), y_bin)) == pytest.approx(0.16083185, rel=1e-5)


def test_binary_cross_entropy_label_smoothing_increases_loss():
    y_bin = jnp.array([1, 0, 1])
    y_model = jnp.array([2.0, -1.0, np.pi])
    p = jax.nn.sigmoid(y_model)
    assert luxc.BinaryCrossEntropyLoss(label_smoothing=0.1)(p, y_bin) > \
        luxc.BinaryCrossEntropyLoss()(p, y_bin)
    assert luxc.BinaryCrossEntropyLoss(label_smoothing=0.1, logits=True)(y_model, y_bin) > \
        luxc.BinaryCrossEntropyLoss(logits=True)(y_model, y_bin)


def test_binary_focal_loss():
    y = jnp.array([[0, 1, 0], [1, 0, 1]])
    y_hat = jnp.array([[0.268941, 0.5, 0.268941], [0.731059, 0.5, 0.731059]])
    assert float(luxc.BinaryFocalLoss()(y_hat, y)) == pytest.approx(0.0728675615927385, rel=1e-5)
    assert float(luxc.BinaryFocalLoss(gamma=0)(y_hat, y)) == pytest.approx(
        float(luxc.BinaryCrossEntropyLoss()(y_hat, y)), rel=1e-5)


def test_cross_entropy():
    assert float(luxc.CrossEntropyLoss()(SOFTMAX, ONE_HOT)) == pytest.approx(1.6076053, rel=1e-6)
    assert float(luxc.CrossEntropyLoss(agg="sum")(SOFTMAX, ONE_HOT)) == pytest.approx(
        5 * 1.6076053, rel=1e-6)
    assert float(luxc.CrossEntropyLoss(label_smoothing=0.15)(SOFTMAX, ONE_HOT)) == pytest.approx(
        1.5776052, rel=1e-6)


def test_dice_coefficient():
    y_pred = jnp.array([1.1, 2.1, 3.1])
    loss = luxc.DiceCoeffLoss()
    assert float(loss(y_pred, jnp.arange(1, 4))) == pytest.approx(0.000992391663909964, rel=1e-3)
    assert 1 - float(loss(y_pred, jnp.arange(1, 4))) == pytest.approx(0.99900760833609, rel=1e-6)
    # Julia's reshape(y_pred, 3, 1) is one sample of 3 features: (1, 3) batch-first.
    assert float(loss(y_pred.reshape(1, 3), jnp.arange(1, 4).reshape(1, 3))) == pytest.approx(
        0.000992391663909964, rel=1e-3)


def test_focal_loss():
    assert float(luxc.FocalLoss()(SOFTMAX, ONE_HOT)) == pytest.approx(1.1277556, rel=1e-6)


def test_hinge_losses():
    y_true = jnp.array([1, -1, 1, 1])
    y_pred = jnp.array([0.1, 0.3, 1, 1.5])
    assert float(luxc.HingeLoss()(y_pred, y_true)) == pytest.approx(0.55, rel=1e-6)
    assert float(luxc.SquaredHingeLoss()(y_pred, y_true)) == pytest.approx(0.625, rel=1e-6)


def test_huber_loss():
    y_model = jnp.array([1.1, 2.1, 3.1])
    assert float(luxc.HuberLoss()(y_model, jnp.arange(1, 4))) == pytest.approx(0.005, rel=1e-4)
    assert float(luxc.HuberLoss(delta=0.05)(y_model, jnp.arange(1, 4))) == pytest.approx(
        0.00375, rel=1e-4)


def test_kl_divergence():
    p1 = jnp.array([[1, 0], [0, 1]])
    p2 = jnp.full((2, 2), 0.5)
    assert float(luxc.KLDivergenceLoss()(p2, p1)) == pytest.approx(np.log(2), rel=1e-6)
    assert float(luxc.KLDivergenceLoss(agg="sum")(p2, p1)) == pytest.approx(2 * np.log(2), rel=1e-6)
    assert float(luxc.KLDivergenceLoss(epsilon=0)(p2, p2)) == 0.0
    assert float(luxc.KLDivergenceLoss(epsilon=0)(p1, p2)) == np.inf


def test_mae_mse_msle():
    y_model = jnp.array([1.1, 1.9, 3.1])
    assert float(luxc.MAELoss()(y_model, jnp.arange(1, 4))) == pytest.approx(0.1, rel=1e-5)
    assert float(luxc.MSELoss()(y_model, jnp.arange(1, 4))) == pytest.approx(0.01, rel=1e-4)
    msle = luxc.MSLELoss()
    assert float(msle(jnp.array([1.1, 2.2, 3.3], jnp.float32), jnp.arange(1, 4))) == pytest.approx(
        0.009084041, rel=1e-5)
    assert float(msle(jnp.array([0.9, 1.8, 2.7], jnp.float32), jnp.arange(1, 4))) == pytest.approx(
        0.011100831, rel=1e-5)


def test_poisson_loss():
    assert float(luxc.PoissonLoss()(jnp.array([1, 3, 3]), jnp.arange(1, 4))) == pytest.approx(
        0.502312852219817, rel=1e-5)


def test_siamese_contrastive_loss():
    y_hat = jnp.array([0.5, 1.5, 2.5])
    assert float(luxc.SiameseContrastiveLoss()(y_hat, jnp.arange(1, 4))) == pytest.approx(
        -4.833333333333333, rel=1e-6)
    assert float(luxc.SiameseContrastiveLoss(margin=2)(y_hat, jnp.arange(1, 4))) == pytest.approx(
        -4.0, rel=1e-6)


def test_l1_and_l2_loss_aliases():
    # losses.jl: const L1Loss = MAELoss; const L2Loss = MSELoss.
    assert luxc.L1Loss is luxc.MAELoss and luxc.L2Loss is luxc.MSELoss


@pytest.mark.parametrize("agg,expected", [(sum, 5 * 1.6076053), (statistics.mean, 1.6076053),
                                          (np.sum, 5 * 1.6076053), (jnp.mean, 1.6076053)])
def test_python_and_numpy_aggregations_reduce_the_whole_array(agg, expected):
    # Seed: CrossEntropyLoss()(ŷ, y) ≈ 1.6076053 and 5 * 1.6076053 ≈ CrossEntropyLoss(agg=sum).
    out = luxc.CrossEntropyLoss(agg=agg)(SOFTMAX, ONE_HOT)
    assert out.shape == () and float(out) == pytest.approx(expected, rel=1e-5)


def test_builtin_max_aggregates_every_element():
    d = jnp.array([[0.1, 0.5], [0.3, 0.2]])
    assert float(luxc.MAELoss(agg=max)(d, jnp.zeros((2, 2)))) == pytest.approx(0.5)


def test_scalar_target_is_broadcast():
    # loss_tests.jl: bceloss([0.1, 0.2, 0.9], 1) ≈ -mean(log, [0.1, 0.2, 0.9]) (constant label).
    p = jnp.array([0.1, 0.2, 0.9])
    assert float(luxc.BinaryCrossEntropyLoss()(p, 1)) == pytest.approx(-np.log([0.1, 0.2, 0.9])
                                                                       .mean(), rel=1e-5)


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
    assert luxc.CrossEntropyLoss(agg=None)(SOFTMAX, ONE_HOT).shape == (5,)


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
    p = jax.nn.softmax(normal(1, (2, 12))).reshape(2, 3, 4)
    y = jnp.eye(12)[jnp.array([3, 7])].reshape(2, 3, 4)
    a = 0.1
    smoothed = np.asarray(y) * (1 - a) + a / 12  # seed: α / (size along the class axes)
    expected = np.mean(-np.sum(smoothed * np.log(np.asarray(p, np.float64)), axis=(1, 2)))
    out = luxc.CrossEntropyLoss(dims=(1, 2), label_smoothing=a, epsilon=0)(p, y)
    assert float(out) == pytest.approx(expected, rel=1e-5)


def test_hinge_gradient_is_the_true_one():
    # Deliberate difference (docs/lux.md): the gradient is the true -y where 1 - yŷ > 0 (Lux's
    # derivative(l1_hinge_loss) gives 1), and 0 at the kink yŷ == 1 as Lux's. The seed's values
    # (0.55) are in test_hinge_losses.
    p, y = jnp.array([0.1, 0.3, 1.0, 1.5]), jnp.array([1.0, -1.0, 1.0, 1.0])
    np.testing.assert_array_equal(jax.grad(luxc.HingeLoss(agg="sum"))(p, y), [-1, 1, 0, 0])
