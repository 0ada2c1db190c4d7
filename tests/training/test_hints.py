"""Mistakes a newcomer makes get an answer in their own terms."""

import re

import jax.numpy as jnp
import optax
import pytest

import luxc
from luxc._demo import _loss_curve
from luxc.training import ObjectiveError


@pytest.mark.parametrize("name", ["single_train_step", "single_train_step_", "compute_objective",
                                  "compute_gradients", "apply_gradients"])
def test_a_training_function_at_the_top_level_points_to_luxc_training(name):
    with pytest.raises(AttributeError, match=rf"it lives in luxc.training .*luxc.training.{name}\b"):
        getattr(luxc, name)


def test_other_missing_names_are_a_plain_attribute_error():
    with pytest.raises(AttributeError, match=r"^module 'luxc' has no attribute 'no_such_name'$"):
        luxc.no_such_name  # noqa: B018
    assert not hasattr(luxc, "_private")


@pytest.mark.parametrize("backend", [luxc.AutoJAX(), luxc.AutoXLA()], ids=["AutoJAX", "AutoXLA"])
def test_a_loss_given_by_name_says_what_an_objective_is(backend):
    model = luxc.nn.Dense(2, 1)
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    data = (jnp.ones((4, 2)), jnp.ones((4, 1)))
    with pytest.raises(ObjectiveError, match=r"luxc.MSELoss\(\).*received the str 'mse'$"):
        luxc.training.single_train_step(backend, "mse", data, ts)


def test_the_demo_curve_has_whole_step_ticks_and_readable_small_losses():
    losses = [2.0 * 0.97**i for i in range(400)]  # down to ~1.1e-5
    text = re.sub(r"\x1b\[[0-9;]*m", "", _loss_curve(losses))  # without the colour codes
    lines = text.splitlines()
    x_axis = lines[next(i for i, line in enumerate(lines) if "└" in line) + 1]
    assert x_axis.split() == ["1", "100", "200", "300", "400"]
    assert re.search(r"^1e-05[┌┤└│]", text, re.MULTILINE)


def test_integer_labels_for_cross_entropy_hint_at_one_hot():
    y_pred = jnp.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"integer class labels\? One-hot them first: "
                                         r"jax.nn.one_hot\(y, 3\)"):
        luxc.CrossEntropyLoss()(y_pred, jnp.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"differ$"):  # floats of another shape: no guess
        luxc.CrossEntropyLoss()(y_pred, jnp.zeros((4,)))


def test_cache_info_reads_as_english():
    from luxc.runtime import CacheInfo

    assert str(CacheInfo(1, 1, 1, 0.5)) == "1 hit, 1 miss, 1 entry, 0.50s compiling"
    assert str(CacheInfo(499, 2, 2, 1.0)).startswith("499 hits, 2 misses, 2 entries")
