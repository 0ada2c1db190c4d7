"""The artifacts the trust tests attack: each test gets its own copy of a step exported once."""

import shutil

import jax
import jax.numpy as jnp
import optax
import pytest
from jax import lax

import luxc
from tests.trust._artifacts import eager_losses, export_quietly, mlp_state, step_data, unsigned


@pytest.fixture(scope="session")
def template(tmp_path_factory):
    """The MLP's signed artifact (``tests/trust/_artifacts.py``), exported once; never edited."""
    return export_quietly(luxc.MSELoss(), step_data(), mlp_state(),
                          tmp_path_factory.mktemp("template") / "step.luxc")


@pytest.fixture(scope="session")
def mlp_losses():
    """The reference for the template's first 3 steps: their losses, trained eagerly."""
    return eager_losses(mlp_state(), 3)[0]


@pytest.fixture
def art(template, tmp_path):
    """A copy of the signed artifact, this test's to attack."""
    d = tmp_path / "art"
    shutil.copytree(template, d)
    return d


def _endless_objective(model, ps, st, data):
    x, y = data
    pred, st = model(x, ps, st)
    # float32 c + 1 stops growing at 2**24: c >= 0 stays true, the loop never ends
    spin = lax.stop_gradient(lax.while_loop(lambda c: c >= 0.0, lambda c: c + 1.0, jnp.sum(x)))
    return jnp.mean((pred - y) ** 2) + 0.0 * spin, st, {}


@pytest.fixture(scope="session")
def endless_template(tmp_path_factory):
    model = luxc.nn.Dense(3, 1)
    ps, st = luxc.setup(jax.random.key(0), model)
    x = jnp.ones((8, 3))
    return unsigned(export_quietly(_endless_objective, (x, x[:, :1]),
                                   luxc.TrainState(model, ps, st, optax.sgd(0.1)),
                                   tmp_path_factory.mktemp("endless") / "spin"))


@pytest.fixture
def endless(endless_template, tmp_path):
    """An unsigned artifact (a stranger's) whose step never ends: a copy of its own."""
    d = tmp_path / "spin"
    shutil.copytree(endless_template, d)
    return d
