"""Every doctest value of the seed's loss section, in Python's batch-first layout.

Julia's ``(classes, batch)`` matrices are transposed to ``(batch, classes)``, and ``dims=1``
(Julia's class axis) becomes ``dims=-1``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxc

# y = [1 0 0 0 1; 0 1 0 1 0; 0 0 1 0 0] in Julia, transposed.
ONE_HOT = jnp.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
# softmax(reshape(-7:7, 3, 5)), transposed: each row is softmax([-7+3j, -6+3j, -5+3j]).
SOFTMAX = jax.nn.softmax(jnp.arange(-7.0, 8.0).reshape(5, 3), axis=-1)


def test_generic_loss_function():
    mse = luxc.GenericLossFunction(lambda yp, y: jnp.abs(yp - y) ** 2)
    assert float(mse(jnp.array([1.1, 1.9, 3.1]), jnp.arange(1, 4))) == pytest.approx(0.01, rel=1e-5)


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
