"""CompileOptions(microbatches=k): gradient accumulation inside one compiled step gives the full
batch's loss and gradients (a mean loss), against a closed form and eager AutoJAX."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import single_train_step, train_steps_
from luxc.training._microbatch import accumulate
from tests.runtime._random import normal

X = normal(1, (16, 5))
Y = normal(2, (16, 3))


def _lstsq_grads(w, st, data):
    # d/dw mean((x w - y)^2) = 2/N x^T (x w - y), written out: no luxc, no autodiff.
    x, y = data
    r = x @ w - y
    return 2 * x.T @ r / (x.shape[0] * y.shape[1]), jnp.mean(r ** 2), st, {"n": x.shape[0]}


@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_accumulated_gradients_of_a_mean_loss_are_the_full_batch_s(k):
    w = normal(3, (5, 3))
    g, loss, st, stats = accumulate(_lstsq_grads, k)(w, {"s": 1}, (X, Y))
    g_full, loss_full, _, _ = _lstsq_grads(w, {}, (X, Y))
    np.testing.assert_allclose(g, g_full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss, loss_full, rtol=1e-6)
    assert st == {"s": 1} and int(stats["n"]) == 16 // k


def test_the_state_is_carried_through_the_microbatches():
    def count(w, st, data):
        return w, jnp.sum(data), {"seen": st["seen"] + data.shape[0]}, {}
    _, loss, st, _ = accumulate(count, 4)(0.0, {"seen": 0}, jnp.arange(8.0))
    assert int(st["seen"]) == 8 and float(loss) == np.mean([1, 5, 9, 13])


def _mlp_state():
    model = nn.Chain(nn.Dense(5, 32, jax.nn.tanh), nn.Dense(32, 3))
    ps, st = luxc.setup(0, model)
    return luxc.TrainState(model, ps, st, optax.sgd(1e-2, momentum=0.9))  # less to compile than Adam


@pytest.fixture(scope="module")
def full_batch_steps():
    """Two eager full-batch steps from ``_mlp_state()``, on (X, Y) then on both reversed: each
    step's gradients, loss and TrainState after it."""
    ts, steps = _mlp_state(), []
    for data in ((X, Y), (X[::-1], Y[::-1])):
        grads, loss, _, ts = single_train_step(luxc.AutoJAX(), luxc.MSELoss(), data, ts)
        steps.append((grads, loss, ts))
    return steps


def test_compiled_microbatches_equal_the_eager_full_batch(full_batch_steps):
    ref_grads, ref_loss, ref = full_batch_steps[0]
    options = luxc.CompileOptions(microbatches=4)
    grads, loss, _, ts = single_train_step(luxc.AutoXLA(), luxc.MSELoss(), (X, Y), _mlp_state(),
                                           compile_options=options)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(ts.parameters), jax.tree.leaves(ref.parameters)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert ts.step == 1  # one optimiser update for the four parts


def test_train_steps_with_microbatches_equal_full_batch_steps(full_batch_steps):
    batches = (jnp.stack([X, X[::-1]]), jnp.stack([Y, Y[::-1]]))
    _, losses, _, ts = train_steps_(luxc.AutoXLA(), luxc.MSELoss(), batches, _mlp_state(),
                                    compile_options=luxc.CompileOptions(microbatches=2))
    np.testing.assert_allclose(losses, [loss for _, loss, _ in full_batch_steps], rtol=1e-5)
    ref = full_batch_steps[-1][2]
    for a, b in zip(jax.tree.leaves(ts.parameters), jax.tree.leaves(ref.parameters)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_batch_not_divisible_is_one_line_naming_the_leaf_before_compiling():
    data = (X[:10], Y[:10])
    ts = _mlp_state()
    with pytest.raises(ValueError, match=r"^CompileOptions\(microbatches=4\): data\[0\] has shape "
                                         r"\(10, 5\), whose leading \(batch\) axis is not "
                                         r"divisible by 4"):
        single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts,
                          compile_options=luxc.CompileOptions(microbatches=4))
    info = luxc.cache_info(ts)
    assert info.entries == 0 and info.compile_seconds == 0  # nothing compiled


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_microbatches_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="CompileOptions: microbatches must be an int >= 1"):
        luxc.CompileOptions(microbatches=bad)


def test_changing_microbatches_recompiles_and_says_why():
    ts = _mlp_state()
    single_train_step(luxc.AutoXLA(), luxc.MSELoss(), (X, Y), ts)
    single_train_step(luxc.AutoXLA(), luxc.MSELoss(), (X, Y), ts,
                      compile_options=luxc.CompileOptions(microbatches=2))
    assert luxc.explain_recompiles(ts) == ["recompiling: compile options: microbatches 1 -> 2"]


@pytest.mark.slow
def test_microbatches_keep_a_kth_of_the_activation_temporaries():
    # Activations dominate: 2048 rows x 256 features (2 MiB a tensor) against 322 KiB of
    # parameters. One part's activations live at a time, so XLA's temporaries are 1/k of the
    # full batch's, plus at most one parameter-sized buffer (the gradient being accumulated).
    model = nn.Chain(nn.Dense(32, 256, jax.nn.tanh), nn.Dense(256, 256, jax.nn.tanh),
                     nn.Dense(256, 32))
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    x = normal(3, (2048, 32))
    parameter_bytes = 4 * luxc.parameter_count(model)

    def temporaries(k):
        cs = luxc.compile_step(luxc.MSELoss(), (x, x), ts,
                               compile_options=luxc.CompileOptions(microbatches=k))
        return cs.memory_analysis()["temp_size_in_bytes"]

    one = temporaries(1)
    assert one > 8 * parameter_bytes, one  # the activations are what the test measures
    for k in (2, 4, 8):
        assert temporaries(k) <= one / k + parameter_bytes, (k, temporaries(k), one)
