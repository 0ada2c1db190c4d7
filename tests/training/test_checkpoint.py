"""Checkpoints: atomic, checksummed, and resuming is bit-identical."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.runtime.files._errors import ArtifactError
from luxc.training import single_train_step_
from tests.passes._inputs import normal


def _setup():
    model = nn.Chain(nn.Dense(3, 16), nn.BatchNorm(16, jax.nn.relu), nn.Dropout(0.2),
                     nn.Dense(16, 1))
    ps, st = luxc.setup(jax.random.key(0), model)
    x = normal(1, (32, 3))
    data = (x, jnp.sum(x, axis=1, keepdims=True))
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    return luxc.TrainState(model, ps, st, opt), data


def _train(ts, data, n):
    for _ in range(n):
        _, _, _, ts = single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
    return ts


def test_resuming_from_a_checkpoint_is_bit_identical(tmp_path):
    ts, data = _setup()
    half = _train(ts, data, 5)
    luxc.save_state(tmp_path / "ckpt.safetensors", half)
    straight = _train(half, data, 5)  # the run the checkpoint was taken from, never stopped
    fresh, _ = _setup()
    resumed = luxc.load_state(tmp_path / "ckpt.safetensors", like=fresh)
    assert resumed.step == 5
    resumed = _train(resumed, data, 5)
    for a, b in zip(jax.tree.leaves((straight.parameters, straight.states, straight.optimizer_state)),
                    jax.tree.leaves((resumed.parameters, resumed.states, resumed.optimizer_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    ts, _ = _setup()
    path = tmp_path / "ckpt.safetensors"
    luxc.save_state(path, ts)
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        luxc.load_state(path, like=ts)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    ts, _ = _setup()
    luxc.save_state(tmp_path / "ckpt.safetensors", ts)
    other = nn.Chain(nn.Dense(3, 4))
    ps, st = luxc.setup(jax.random.key(0), other)
    with pytest.raises(ArtifactError, match="does not match this TrainState: .*not in this TrainState: parameters\\['layer_2'\\]"):
        luxc.load_state(tmp_path / "ckpt.safetensors", like=luxc.TrainState(other, ps, st, optax.sgd(0.1)))


def test_saving_over_a_checkpoint_keeps_the_old_one_until_the_new_one_is_complete(tmp_path, monkeypatch):
    ts, data = _setup()
    path = tmp_path / "ckpt.safetensors"
    luxc.save_state(path, ts)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        luxc.save_state(path, _train(ts, data, 1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_load_in_python_gives_a_compiled_step_like_object(tmp_path):
    ts, data = _setup()
    luxc.export_step(luxc.MSELoss(), data, ts, tmp_path / "a.luxc")
    loaded = luxc.load(tmp_path / "a.luxc")
    assert "func.func public @main" in loaded.as_text("optimized")
    assert "HloModule" in loaded.as_text("hlo")
    assert loaded.cost_analysis()["flops"] > 0 and loaded.memory_stats()
    losses = loaded.run(3)
    expected = []
    for _ in range(3):
        _, loss, _, ts = single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
        expected.append(float(loss))
    np.testing.assert_allclose(losses, expected, rtol=1e-6)


def _incr_model():
    # The README's @compact example: a static field assigned in the body (Lux's `incr *= 10`).
    @luxc.compact(W=jnp.ones((7, 5)), b=jnp.zeros(7), incr=1)
    def scaled_dense(self, x):
        self.incr *= 10
        return jax.nn.relu(x @ self.W.T + self.b) + self.incr

    return scaled_dense


def test_static_state_is_saved_and_restored_so_resume_is_bit_identical(tmp_path):
    model, data = _incr_model(), (jnp.ones((2, 5)), jnp.zeros((2, 7)))

    def fresh():
        ps, st = luxc.setup(jax.random.key(0), model)
        return luxc.TrainState(model, ps, st, optax.sgd(1e-3))

    def step(ts):
        _, loss, _, ts = single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
        return ts, float(loss)

    ts = fresh()
    for _ in range(2):
        ts, _ = step(ts)
    luxc.save_state(tmp_path / "ckpt.safetensors", ts)
    back = luxc.load_state(tmp_path / "ckpt.safetensors", like=fresh())
    assert back.states == {"incr": luxc.Val(100)}  # 1 * 10 * 10: two steps of `incr *= 10`
    assert step(back)[1] == step(ts)[1]


def test_a_checkpoint_of_another_static_value_kind_is_refused(tmp_path):
    model = _incr_model()
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, {"incr": luxc.Val(lambda: 1)}, optax.sgd(1e-3))
    luxc.save_state(tmp_path / "ckpt.safetensors", ts)
    with pytest.raises(ArtifactError, match="states\\['incr'\\] was Val\\(<lambda>\\)"):
        luxc.load_state(tmp_path / "ckpt.safetensors", like=ts.replace(states=st))
