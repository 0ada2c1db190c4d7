"""CompileOptions(mixed_precision=...): float32 master weights, optimiser state, loss and
gradients around a step computed in bfloat16 (README "Mixed precision")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import AutoJAX, AutoXLA, compute_gradients, single_train_step
from luxc.training._mixed_precision import MixedPrecision
from luxc.training._step import reverse_gradients

BF16 = luxc.CompileOptions(mixed_precision="bf16")
# bfloat16 keeps 8 significant bits: a relative rounding error of 2**-8 per rounding.
BF16_EPS = 2.0**-8


def _mlp():
    return nn.Chain(nn.Dense(6, 16, jax.nn.relu), nn.BatchNorm(16), nn.Dense(16, 3))


def _data(n=32):
    x = jax.random.normal(jax.random.key(1), (n, 6))
    y = jax.nn.one_hot(jnp.arange(n) % 3, 3)
    return x, y


def _recording(seen):
    """An optax transformation that records the dtypes of the gradients it is handed."""
    inner = optax.adam(1e-2)

    def update(grads, state, params=None):
        seen.extend(str(g.dtype) for g in jax.tree.leaves(grads))
        return inner.update(grads, state, params)

    return optax.GradientTransformation(inner.init, update)


def test_unknown_mixed_precision_is_a_value_error_listing_the_allowed_values():
    with pytest.raises(ValueError, match=r"mixed_precision must be one of None, 'bf16', 'f16'; "
                                         r"received 'fp16'"):
        luxc.CompileOptions(mixed_precision="fp16")


def test_master_weights_optimizer_state_loss_and_gradients_stay_float32():
    model, seen = _mlp(), []
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, _recording(seen))
    grads, loss, _, ts = single_train_step(AutoXLA(), luxc.CrossEntropyLoss(logits=True), _data(),
                                           ts, compile_options=BF16)
    assert seen and set(seen) == {"float32"}
    assert loss.dtype == jnp.float32
    for tree in (grads, ts.parameters, ts.optimizer_state, ts.states):
        floats = [x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and set(floats) == {jnp.dtype(jnp.float32)}


def test_the_step_computes_in_bfloat16():
    model = _mlp()
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    text = luxc.compile_step(luxc.CrossEntropyLoss(logits=True), _data(), ts,
                             compile_options=BF16).as_text("traced")
    dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
    assert len(dots) == 5  # 2 forward, 2 weight gradients, 1 input gradient (of layer 3)
    assert all("bf16>, tensor<" in d for d in dots)


@pytest.mark.slow
def test_loss_and_gradients_match_float32_within_the_bfloat16_error_bound():
    model = nn.Chain(nn.Dense(6, 16, jnp.tanh), nn.LayerNorm(16), nn.Dense(16, 3))
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    data, obj = _data(), luxc.CrossEntropyLoss(logits=True)
    g32, l32, _, _ = compute_gradients(AutoJAX(), obj, data, ts)
    g16, l16, _, _ = compute_gradients(AutoXLA(), obj, data, ts, compile_options=BF16)
    # eager: the same policy run op by op (independent of the compiled path and its passes)
    ge, le, _, _ = reverse_gradients(obj, MixedPrecision(model, "bf16"))(ts.parameters, st, data)
    assert abs(float(l16) - float(l32)) <= 8 * BF16_EPS * abs(float(l32))
    assert abs(float(l16) - float(le)) <= 4 * BF16_EPS * abs(float(l32))
    # compared in numpy (float32): jax would compile its comparisons anew for every leaf's shape
    g16, g32, ge = (jax.tree.map(lambda g: np.asarray(g, np.float32), tree) for tree in (g16, g32, ge))
    for a, b, c in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), jax.tree.leaves(ge)):
        scale = np.max(np.abs(b))
        assert np.max(np.abs(a - b)) <= 16 * BF16_EPS * scale
        assert np.max(np.abs(a - c)) <= 8 * BF16_EPS * scale
    assert np.max(np.abs(g16["layer_1"]["weight"] - g32["layer_1"]["weight"])) > 0


def test_batchnorm_statistics_are_float32_and_the_running_state_stays_float32():
    model = nn.Chain(nn.Dense(6, 16), nn.BatchNorm(16))
    ps, st = luxc.setup(0, model)
    x = 100.0 + jax.random.normal(jax.random.key(2), (64, 6))  # a mean bfloat16 rounds coarsely

    def obj(model, ps, st, data):
        y, st = model(data, ps, st)
        return jnp.mean(y), st, {}

    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    _, _, _, ts16 = compute_gradients(AutoXLA(), obj, x, ts, compile_options=BF16)
    _, _, _, ts32 = compute_gradients(AutoJAX(), obj, x, ts)
    r16, r32 = ts16.states["layer_2"]["running_mean"], ts32.states["layer_2"]["running_mean"]
    assert r16.dtype == jnp.float32
    # the statistics of the bfloat16 layer-1 output, accumulated in float32
    h = (x @ ps["layer_1"]["weight"].T + ps["layer_1"]["bias"])
    assert np.allclose(r16, 0.1 * np.mean(np.asarray(h), axis=0), rtol=4 * BF16_EPS, atol=0.05)
    assert np.allclose(r16, r32, rtol=4 * BF16_EPS, atol=0.05)


def test_changing_the_policy_recompiles_and_says_why():
    model = _mlp()
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    single_train_step(AutoXLA(), luxc.MSELoss(), _data(), ts)
    single_train_step(AutoXLA(), luxc.MSELoss(), _data(), ts, compile_options=BF16)
    assert luxc.explain_recompiles(ts) == [
        "recompiling: compile options: mixed precision None -> 'bf16'"]


def test_a_flax_model_is_cast_at_its_boundary():
    linen = pytest.importorskip("flax.linen")

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(3)(linen.relu(linen.Dense(8)(x)))

    x, y = _data()
    model = nn.FromFlax(Net(), x[:1])
    ps, st = luxc.setup(0, model)
    seen = []
    ts = luxc.TrainState(model, ps, st, _recording(seen))
    cs = luxc.compile_step(luxc.MSELoss(), (x, y), ts, compile_options=BF16)
    dots = [d for d in cs.as_text("traced").splitlines() if "stablehlo.dot_general" in d]
    assert dots and all("bf16>, tensor<" in d for d in dots)
    _, loss, _, ts = cs(ts, (x, y))
    assert loss.dtype == jnp.float32 and set(seen) == {"float32"}
    assert {x.dtype for x in jax.tree.leaves(ts.parameters)} == {jnp.dtype(jnp.float32)}


F16 = luxc.CompileOptions(mixed_precision="f16")


def _f16_state():
    model = nn.Chain(nn.Dense(6, 16, jnp.tanh), nn.Dense(16, 3))
    ps, st = luxc.setup(0, model)
    return luxc.TrainState(model, ps, st, optax.sgd(1e-2, momentum=0.9))  # a state to skip; less to compile than Adam


def test_f16_starts_at_2_pow_15_and_trains_with_the_unscaled_float32_loss():
    ts, data, obj = _f16_state(), _data(), luxc.CrossEntropyLoss(logits=True)
    assert ts.loss_scale is None
    g16, l16, _, new = single_train_step(AutoXLA(), obj, data, ts, compile_options=F16)
    g32, l32, _, _ = compute_gradients(AutoJAX(), obj, data, ts)
    assert float(new.loss_scale) == 2.0**15 and new.step == 1
    assert l16.dtype == jnp.float32
    # float16 keeps 11 significant bits; the scale is divided out exactly
    assert abs(float(l16) - float(l32)) <= 2.0**-6 * abs(float(l32))
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
        assert a.dtype == jnp.float32
        a, b = np.asarray(a), np.asarray(b, np.float32)  # numpy: no comparison to compile
        assert np.max(np.abs(a - b)) <= 2.0**-5 * np.max(np.abs(b))


def test_a_non_finite_gradient_skips_the_update_and_halves_the_scale():
    ts, (x, y) = _f16_state(), _data()
    _, _, _, ts = single_train_step(AutoXLA(), luxc.MSELoss(), (x, y), ts, compile_options=F16)
    # targets of 3e3: the gradient scaled by 2**15 exceeds float16's largest value, 65504
    _, _, _, new = single_train_step(AutoXLA(), luxc.MSELoss(), (x, 3e3 * y), ts,
                                     compile_options=F16)
    assert new.step == ts.step == 1
    assert float(new.loss_scale) == float(ts.loss_scale) / 2
    for a, b in zip(jax.tree.leaves((new.parameters, new.optimizer_state)),
                    jax.tree.leaves((ts.parameters, ts.optimizer_state))):
        np.testing.assert_array_equal(a, b)
    _, _, _, after = single_train_step(AutoXLA(), luxc.MSELoss(), (x, y), new, compile_options=F16)
    assert after.step == 2 and float(after.loss_scale) == 2.0**14


def test_the_scale_doubles_after_the_growth_interval_of_finite_steps(monkeypatch):
    from luxc.training import _mixed_precision

    monkeypatch.setattr(_mixed_precision, "GROWTH_INTERVAL", 3)  # read when the step is traced
    ts, data = _f16_state(), _data()
    scales = []
    for _ in range(7):
        _, _, _, ts = single_train_step(AutoXLA(), luxc.MSELoss(), data, ts, compile_options=F16)
        scales.append(float(ts.loss_scale))
    assert scales == [2.0**15] * 2 + [2.0**16] * 3 + [2.0**17] * 2
    assert ts.step == 7


def test_the_loss_scale_survives_a_checkpoint(tmp_path):
    ts, (x, y) = _f16_state(), _data()
    for data in ((x, y), (x, 3e3 * y), (x, y)):
        _, _, _, ts = single_train_step(AutoXLA(), luxc.MSELoss(), data, ts, compile_options=F16)
    luxc.save_state(tmp_path / "ckpt", ts)
    back = luxc.load_state(tmp_path / "ckpt", _f16_state())
    assert back.step == ts.step == 2 and float(back.loss_scale) == 2.0**14
    assert int(back._loss_scaling.finite_steps) == int(ts._loss_scaling.finite_steps) == 1
    _, _, _, a = single_train_step(AutoXLA(), luxc.MSELoss(), (x, y), back, compile_options=F16)
    _, _, _, b = single_train_step(AutoXLA(), luxc.MSELoss(), (x, y), ts, compile_options=F16)
    for p, q in zip(jax.tree.leaves(a.parameters), jax.tree.leaves(b.parameters)):
        np.testing.assert_array_equal(p, q)


F16_FACTORY = '''
import jax, jax.numpy as jnp, optax, luxc

def factory():
    model = luxc.nn.Chain(luxc.nn.Dense(6, 16, jnp.tanh), luxc.nn.Dense(16, 3))
    ps, st = luxc.setup(0, model)
    x = jax.random.normal(jax.random.key(1), (32, 6))
    y = 3e3 * jax.nn.one_hot(jnp.arange(32) % 3, 3)  # overflows float16 at the scale 2**15
    return luxc.MSELoss(), (x, y), luxc.TrainState(model, ps, st, optax.sgd(1e-2, momentum=0.9))
'''


@pytest.mark.slow
def test_luxc_compile_mixed_precision_f16_keeps_the_scale_in_the_artifact_and_run_shows_it(tmp_path):
    import json

    from tests.support import luxc_cli_each

    (tmp_path / "f16_src.py").write_text(F16_FACTORY)
    compiled, ran, bad = luxc_cli_each([
        (tmp_path, ["compile", "f16_src.py:factory", "--out", "f16.luxc", "--mixed-precision", "f16"]),
        (tmp_path, ["run", "f16.luxc", "--steps", "3"]),
        (tmp_path, ["compile", "f16_src.py:factory", "--out", "x.luxc", "--mixed-precision", "fp8"])])
    assert compiled.returncode == 0, compiled.stderr
    manifest = json.loads((tmp_path / "f16.luxc" / "manifest.json").read_text())
    assert manifest["compile_options"]["mixed_precision"] == "f16"
    assert "loss_scaling.scale" in manifest["layout"]["state_names"]
    assert ran.returncode == 0, ran.stderr
    assert "step 1  loss scale 32768 -> 16384" in ran.stdout
    assert bad.returncode != 0 and "'fp8' is not one of 'bf16', 'f16'" in bad.stderr


def test_train_steps_in_place_count_only_the_updates_they_applied():
    from luxc.training import train_steps_

    ts, (x, y) = _f16_state(), _data()
    # four steps in one compiled call; the second overflows float16 at the scale 2**15
    batches = (jnp.stack([x] * 4), jnp.stack([y, 3e3 * y, y, y]))
    _, losses, _, ts = train_steps_(AutoXLA(), luxc.MSELoss(), batches, ts, compile_options=F16)
    assert losses.shape == (4,) and ts.step == 3
    assert float(ts.loss_scale) == 2.0**14
    _, _, _, ts = train_steps_(AutoXLA(), luxc.MSELoss(), batches[:1] + (jnp.stack([y] * 4),),
                               ts, compile_options=F16)
    assert ts.step == 7 and float(ts.loss_scale) == 2.0**14
