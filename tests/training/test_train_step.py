"""The training API on every backend: learning, gradients, state, donation and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import (
    apply_gradients,
    apply_gradients_,
    compute_gradients,
    compute_objective,
    single_train_step,
    single_train_step_,
)
from tests.passes._inputs import normal

BACKENDS = [luxc.AutoJAX(), luxc.AutoXLA()]


def _regression(key):
    """The seed's @compact example: fit y = 2x - x³ on x ∈ [-2, 2]."""
    @luxc.compact(w1=nn.Dense(1, 32), w2=[nn.Dense(32, 32) for _ in range(2)],
                  w3=nn.Dense(32, 1), act=jax.nn.relu)
    def model(self, x):
        h = self.act(self.w1(x))
        for w in self.w2:
            h = self.act(w(h))
        return self.w3(h)

    x = jnp.arange(-2.0, 2.05, 0.1)[:, None]
    ps, st = luxc.setup(key, model)
    return luxc.TrainState(model, ps, st, optax.adam(1e-2)), (x, 2 * x - x**3)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: type(b).__name__)
def test_regression_loss_falls_tenfold(key, backend):
    ts, data = _regression(key)
    _, first, _, ts = single_train_step_(backend, luxc.MSELoss(), data, ts)
    for _ in range(60):  # measured: tenfold after 17 steps, over 300-fold from 40 to 60
        _, loss, _, ts = single_train_step_(backend, luxc.MSELoss(), data, ts)
    assert float(loss) < float(first) / 10
    assert ts.step == 61


def test_classifier_learns(key):
    rng = np.random.default_rng(1)
    centers = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    labels = rng.integers(0, 3, 300)
    x = jnp.asarray((centers[labels] + 0.5 * rng.standard_normal((300, 2))).astype(np.float32))
    y = jnp.asarray(np.eye(3, dtype=np.float32)[labels])
    model = nn.Chain(nn.Dense(2, 16, jax.nn.relu), nn.BatchNorm(16), nn.Dense(16, 3))
    ps, st = luxc.setup(key, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(3e-2))
    loss_fn = luxc.CrossEntropyLoss(logits=True)
    _, first, _, ts = single_train_step_(luxc.AutoXLA(), loss_fn, (x, y), ts)
    for _ in range(200):
        _, loss, _, ts = single_train_step_(luxc.AutoXLA(), loss_fn, (x, y), ts)
    assert float(loss) < float(first) / 10
    logits, _ = model(x, ts.parameters, luxc.testmode(ts.states))
    assert float(jnp.mean(jnp.argmax(logits, -1) == labels)) > 0.95


def test_forward_and_reverse_mode_gradients_agree(key):
    ts, data = _regression(key)
    g_rev, l_rev, _, _ = compute_gradients(luxc.AutoJAX(), luxc.MSELoss(), data, ts)
    g_fwd, l_fwd, _, _ = compute_gradients(luxc.AutoForwardDiff(), luxc.MSELoss(), data, ts)
    assert float(l_rev) == pytest.approx(float(l_fwd), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_fwd)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_apply_gradients_is_optax_update(key):
    ts, data = _regression(key)
    grads, _, _, ts = compute_gradients(luxc.AutoJAX(), luxc.MSELoss(), data, ts)
    new = apply_gradients(ts, grads)
    opt = optax.adam(1e-2)
    updates, _ = opt.update(grads, opt.init(ts.parameters), ts.parameters)
    expected = optax.apply_updates(ts.parameters, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
                 new.parameters, expected)
    assert new.step == ts.step + 1


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: type(b).__name__)
def test_batchnorm_state_is_updated_by_a_step_and_frozen_in_test_mode(key, backend):
    model = nn.Chain(nn.Dense(3, 4), nn.BatchNorm(4))
    ps, st = luxc.setup(key, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    data = (normal(0, (16, 3)), jnp.zeros((16, 4)))
    _, _, _, ts2 = single_train_step(backend, luxc.MSELoss(), data, ts)
    assert not bool(jnp.all(ts2.states["layer_2"]["running_mean"] == 0))
    frozen = ts2.replace(states=luxc.testmode(ts2.states))
    _, _, _, ts3 = single_train_step(backend, luxc.MSELoss(), data, frozen)
    np.testing.assert_array_equal(ts3.states["layer_2"]["running_mean"],
                                  ts2.states["layer_2"]["running_mean"])


def test_return_gradients_false_returns_none(key):
    ts, data = _regression(key)
    for backend in BACKENDS:
        grads, _, _, ts = single_train_step_(backend, luxc.MSELoss(), data, ts,
                                             return_gradients=False)
        assert grads is None


def test_stats_are_returned(key):
    ts, data = _regression(key)

    def obj(model, ps, st, d):
        y, st = model(d[0], ps, st)
        loss = jnp.mean((y - d[1]) ** 2)
        return loss, st, {"max_error": jnp.max(jnp.abs(y - d[1]))}

    for backend in BACKENDS:
        _, loss, stats, _ = single_train_step(backend, obj, data, ts)
        assert float(stats["max_error"]) >= float(loss) ** 0.5


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: type(b).__name__)
def test_using_a_consumed_train_state_names_the_call(key, backend):
    ts, data = _regression(key)
    _, _, _, new = single_train_step_(backend, luxc.MSELoss(), data, ts)
    with pytest.raises(luxc.training.ConsumedStateError,
                       match=r"donated to single_train_step_ \(step 0\)"):
        single_train_step_(backend, luxc.MSELoss(), data, ts)
    single_train_step_(backend, luxc.MSELoss(), data, new)


def test_in_place_variants_free_the_old_buffers(key):
    ts, data = _regression(key)
    old = jax.tree.leaves(ts.parameters)
    grads, _, _, ts2 = compute_gradients(luxc.AutoJAX(), luxc.MSELoss(), data, ts)
    apply_gradients_(ts2, grads)
    assert all(leaf.is_deleted() for leaf in old)


def test_non_donating_step_keeps_the_old_state_usable(key):
    ts, data = _regression(key)
    for backend in BACKENDS:
        single_train_step(backend, luxc.MSELoss(), data, ts)
        assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(ts.parameters))


def test_an_in_place_step_leaves_the_arrays_the_train_state_was_made_from(key):
    # The TrainState copies what it is given (same device, sharding, dtype and weak type), so
    # donating its buffers never frees the caller's.
    model = nn.Chain(nn.Dense(3, 4, jax.nn.relu), nn.BatchNorm(4), nn.Dense(4, 1))
    ps, st = luxc.setup(key, model)
    ps["layer_3"]["bias"] = jnp.full((1,), 0.5)  # a weakly typed leaf
    given = jax.tree.leaves((ps, st))
    assert any(leaf.weak_type for leaf in given)
    values = [np.asarray(leaf) for leaf in given]
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    for mine, theirs in zip(jax.tree.leaves((ts.parameters, ts.states)), given):
        assert mine is not theirs and mine.unsafe_buffer_pointer() != theirs.unsafe_buffer_pointer()
        assert (mine.sharding, mine.dtype, mine.weak_type) == (theirs.sharding, theirs.dtype,
                                                               theirs.weak_type)
    x = normal(0, (8, 3))
    for backend in BACKENDS:
        _, _, _, ts = single_train_step_(backend, luxc.MSELoss(), (x, x[:, :1]), ts)
    assert not any(leaf.is_deleted() for leaf in given)
    for leaf, value in zip(given, values):
        np.testing.assert_array_equal(leaf, value)


def test_unknown_backend_is_a_type_error_naming_the_supported_ones(key):
    ts, data = _regression(key)
    with pytest.raises(TypeError, match=r"luxc.AutoJAX\(\), luxc.AutoForwardDiff\(\), luxc.AutoXLA\(\)"):
        single_train_step_("zygote", luxc.MSELoss(), data, ts)


def test_objective_breaking_the_contract_is_explained(key):
    ts, data = _regression(key)
    with pytest.raises(luxc.training.ObjectiveError, match=r"must return \(loss, new_state, stats\)"):
        compute_gradients(luxc.AutoJAX(), lambda m, p, s, d: 1.0, data, ts)
    with pytest.raises(luxc.training.ObjectiveError, match="must return a scalar loss"):
        compute_gradients(luxc.AutoJAX(),
                          lambda m, p, s, d: (m(d[0], p, s)[0], s, {}), data, ts)


def test_train_state_fields_and_validation(key):
    ts, _ = _regression(key)
    for field in ("model", "parameters", "states", "optimizer", "optimizer_state", "step", "cache",
                  "allocator_cache", "objective_function"):
        assert hasattr(ts, field)
    with pytest.raises(AttributeError, match="immutable"):
        ts.step = 3
    with pytest.raises(TypeError, match="optax GradientTransformation"):
        luxc.TrainState(ts.model, ts.parameters, ts.states, "adam")
    leaves = jax.tree.leaves(ts)
    assert len(leaves) == len(jax.tree.leaves((ts.parameters, ts.optimizer_state))) + 1


def test_compute_objective_matches_the_loss(key):
    ts, data = _regression(key)
    y, _ = ts.model(data[0], ts.parameters, ts.states)
    expected = float(luxc.MSELoss()(y, data[1]))
    for backend in BACKENDS:
        loss, _, stats = compute_objective(backend, luxc.MSELoss(), data, ts)
        assert float(loss) == pytest.approx(expected, rel=1e-6) and stats == {}


def test_adjust_changes_the_learning_rate(key):
    ts, data = _regression(key)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    ts = luxc.TrainState(ts.model, ts.parameters, ts.states, opt)
    grads, _, _, _ = compute_gradients(luxc.AutoJAX(), luxc.MSELoss(), data, ts)
    slow = luxc.training.adjust(ts, learning_rate=0.01)
    assert float(ts.optimizer_state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    a = apply_gradients(ts, grads).parameters["w3"]["bias"] - ts.parameters["w3"]["bias"]
    b = apply_gradients(slow, grads).parameters["w3"]["bias"] - ts.parameters["w3"]["bias"]
    np.testing.assert_allclose(b, a / 10, rtol=1e-5)
    luxc.training.adjust_(ts, learning_rate=0.5)
    assert float(ts.optimizer_state.hyperparams["learning_rate"]) == pytest.approx(0.5)


def test_adjust_explains_fixed_hyperparameters(key):
    ts, _ = _regression(key)
    with pytest.raises(ValueError, match="b1 of this optimizer is a constant inside it.*"
                                         "optax.inject_hyperparams"):
        luxc.training.adjust(ts, learning_rate=0.1, b1=0.5)
    scheduled = optax.adam(optax.linear_schedule(1e-2, 1e-3, 100))
    ts = luxc.TrainState(ts.model, ts.parameters, ts.states, scheduled)
    with pytest.raises(ValueError, match="its learning rate is optax.scale_by_schedule"):
        luxc.training.adjust(ts, 0.1)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    ts = luxc.TrainState(ts.model, ts.parameters, ts.states, opt)
    with pytest.raises(ValueError, match="no hyperparameter 'momentum'; it has b1, b2, eps"):
        luxc.training.adjust(ts, momentum=0.1)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: type(b).__name__)
def test_the_arrays_passed_to_train_state_survive_an_in_place_step(key, backend):
    # Lux.jl (src/helpers/training.jl): TrainState holds its own parameters; the user's `ps`
    # is never invalidated by single_train_step!.
    model = nn.Dense(3, 2)
    ps, st = luxc.setup(key, model)
    original = jax.tree.map(np.array, ps)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    data = (jnp.ones((4, 3)), jnp.zeros((4, 2)))
    _, _, _, new = single_train_step_(backend, luxc.MSELoss(), data, ts)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, ps), original)
    with pytest.raises(luxc.training.ConsumedStateError, match=r"donated to single_train_step_ \(step 0\)"):
        _ = ts.parameters
    with pytest.raises(luxc.training.ConsumedStateError, match="single_train_step_"):
        _ = ts.optimizer_state
    assert new.step == 1 and not np.allclose(new.parameters["weight"], original["weight"])


def _objective_with_stats(model, ps, st, data):
    x, y = data
    y_hat, st = model(x, ps, st)
    return jnp.mean((y_hat - y) ** 2), st, {"largest": jnp.max(jnp.abs(y_hat))}


@pytest.mark.parametrize("backend", [*BACKENDS, luxc.AutoForwardDiff()], ids=lambda b: type(b).__name__)
def test_train_steps_equals_k_single_steps(key, backend):
    model = nn.Chain(nn.Dense(3, 8, jax.nn.relu), nn.BatchNorm(8), nn.Dense(8, 2))
    k = 4
    xs = normal(1, (k, 5, 3))
    ys = normal(2, (k, 5, 2))
    ps, st = luxc.setup(key, model)
    ref = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    losses, stats = [], []
    for i in range(k):
        grads, loss, stat, ref = single_train_step(backend, _objective_with_stats, (xs[i], ys[i]), ref)
        losses.append(loss)
        stats.append(stat["largest"])
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    g, batch_losses, batch_stats, out = luxc.training.train_steps_(
        backend, _objective_with_stats, (xs, ys), ts, return_gradients=True)
    assert batch_losses.shape == (k,) and batch_stats["largest"].shape == (k,) and out.step == k
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    close(batch_losses, np.array(losses))
    close(batch_stats["largest"], np.array(stats))
    jax.tree.map(close, (g, out.parameters, out.states), (grads, ref.parameters, ref.states))
    with pytest.raises(luxc.training.ConsumedStateError, match="train_steps_"):
        luxc.training.train_steps_(backend, _objective_with_stats, (xs, ys), ts)
    g, _, _, again = luxc.training.train_steps(backend, _objective_with_stats, (xs, ys), out)
    assert g is None and again.step == 2 * k and out.step == k


def test_train_steps_needs_one_leading_axis_for_every_leaf(key):
    ts, _ = _regression(key)
    with pytest.raises(ValueError, match=r"same leading axis .* received leading sizes "
                                         r"batches\[0\]: 3, batches\[1\]: 4"):
        luxc.training.train_steps(luxc.AutoXLA(), luxc.MSELoss(), (jnp.ones((3, 2, 1)), jnp.ones((4, 2, 1))), ts)
