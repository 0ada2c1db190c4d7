"""flax (linen, nnx) and equinox models as luxc layers (Lux's FromFluxAdaptor role,
Lux.jl src/transform/flux.jl): they train through every backend, count parameters as their
framework does, follow testmode, print, and round-trip through checkpoints."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import single_train_step, single_train_step_

flax_linen = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
eqx = pytest.importorskip("equinox")

# Every model below: Dense 4->8, relu, BatchNorm(8), Dropout(0.5), Dense 8->3.
CLOSED_FORM_COUNT = (4 * 8 + 8) + (8 + 8) + (8 * 3 + 3)


class LinenNet(flax_linen.Module):
    @flax_linen.compact
    def __call__(self, x, train: bool = False):
        x = flax_linen.relu(flax_linen.Dense(8)(x))
        x = flax_linen.BatchNorm(use_running_average=not train)(x)
        x = flax_linen.Dropout(0.5, deterministic=not train)(x)
        return flax_linen.Dense(3)(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.do = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.do(self.bn(jax.nn.relu(self.l1(x)))))


class EqxNet(eqx.Module):
    l1: eqx.nn.Linear
    bn: eqx.nn.BatchNorm
    do: eqx.nn.Dropout
    l2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.l1 = eqx.nn.Linear(4, 8, key=k1)
        self.bn = eqx.nn.BatchNorm(8, "batch", mode="batch")
        self.do = eqx.nn.Dropout(0.5)
        self.l2 = eqx.nn.Linear(8, 3, key=k2)

    def __call__(self, x, state, *, key=None):
        x, state = self.bn(jax.nn.relu(self.l1(x)), state)
        return self.l2(self.do(x, key=key)), state


X = jax.random.normal(jax.random.key(1), (16, 4))
DATA = (X, jax.nn.one_hot(jnp.arange(16) % 3, 3))
LOSS = luxc.CrossEntropyLoss(logits=True)


def _linen():
    return nn.FromFlax(LinenNet(), X[:1])


def _nnx():
    return nn.FromFlax(NnxNet(nnx.Rngs(0)))


def _eqx():
    return nn.FromEquinox(*eqx.nn.make_with_state(EqxNet)(jax.random.key(0)))


ADAPTORS = pytest.mark.parametrize("make", [_linen, _nnx, _eqx], ids=["linen", "nnx", "equinox"])


def _state(layer):
    ps, st = luxc.setup(jax.random.key(0), layer)
    return luxc.TrainState(layer, ps, st, optax.adam(1e-2))


def _run(backend, ts, n, step=single_train_step_):
    losses = []
    for _ in range(n):
        _, loss, _, ts = step(backend, LOSS, DATA, ts)
        losses.append(float(loss))
    return losses, ts


def _train(backend, layer, n=2, step=single_train_step_):
    return _run(backend, _state(layer), n, step)


def _assert_trees_close(a, b, **tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


@ADAPTORS
def test_the_compiled_step_trains_the_model_as_the_eager_backend(make):
    layer = make()
    compiled_losses, compiled = _train(luxc.AutoXLA(), layer)
    eager_losses, eager = _train(luxc.AutoJAX(), layer)
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5)
    _assert_trees_close(compiled.parameters, eager.parameters, rtol=1e-5, atol=1e-6)
    _assert_trees_close(compiled.states["state"], eager.states["state"], rtol=1e-5, atol=1e-6)


def test_forward_mode_gives_the_reverse_mode_losses():
    layer = _eqx()
    forward, _ = _train(luxc.AutoForwardDiff(), layer, n=1, step=single_train_step)
    reverse, _ = _train(luxc.AutoJAX(), layer, n=1, step=single_train_step)
    np.testing.assert_allclose(forward, reverse, rtol=1e-5)


def _framework_counts():
    variables = LinenNet().init(jax.random.key(0), X[:1])
    linen = sum(x.size for x in jax.tree.leaves(variables["params"]))
    nnx_count = sum(x.size for x in jax.tree.leaves(nnx.state(NnxNet(nnx.Rngs(0)), nnx.Param)))
    model, _ = eqx.nn.make_with_state(EqxNet)(jax.random.key(0))
    equinox = sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    return {"linen": linen, "nnx": nnx_count, "equinox": equinox}


@pytest.mark.parametrize("make,name", [(_linen, "linen"), (_nnx, "nnx"), (_eqx, "equinox")])
def test_parameters_count_as_the_framework_counts_them(make, name):
    assert luxc.parameter_count(make()) == _framework_counts()[name] == CLOSED_FORM_COUNT


def _framework_eval(name, layer, ps, st):
    """The framework's own test-mode output, from the same arrays."""
    if name == "linen":
        return LinenNet().apply({"params": ps, **st["state"]}, X, train=False)
    if name == "nnx":
        model = NnxNet(nnx.Rngs(0))  # the adaptor starts from the module's own values
        model.eval()
        return model(X)
    model, state = eqx.nn.make_with_state(EqxNet)(jax.random.key(0))
    model = eqx.nn.inference_mode(model)
    return jax.vmap(model, in_axes=(0, None), out_axes=(0, None), axis_name="batch")(X, state)[0]


@pytest.mark.parametrize("make,name", [(_linen, "linen"), (_nnx, "nnx"), (_eqx, "equinox")])
def test_testmode_switches_dropout_and_batchnorm_to_inference(make, name):
    layer = make()
    ps, st = luxc.setup(jax.random.key(0), layer)
    y, st_test = layer(X, ps, luxc.testmode(st))
    np.testing.assert_allclose(y, _framework_eval(name, layer, ps, st), rtol=1e-5, atol=1e-6)
    _assert_trees_close(st_test, st)  # running statistics and random keys left alone

    y1, st1 = layer(X, ps, luxc.trainmode(st))
    y2, _ = layer(X, ps, st1)
    assert not np.allclose(y1, y2)  # a new dropout mask each call
    assert not np.allclose(y1, y)
    stats = [np.asarray(a) for a in jax.tree.leaves(st1["state"]) if np.ndim(a) == 1]
    initial = [np.asarray(a) for a in jax.tree.leaves(st["state"]) if np.ndim(a) == 1]
    assert any(not np.allclose(a, b) for a, b in zip(stats, initial))  # running stats moved


@ADAPTORS
def test_a_checkpoint_resumes_training_bit_identically(make, tmp_path):
    ts = _state(make())  # the runs share its cache (one compile) and none donates it
    xla = luxc.AutoXLA()
    _, straight = _run(xla, ts, 4, single_train_step)
    _, half = _run(xla, ts, 2, single_train_step)
    luxc.save_state(tmp_path / "ckpt.safetensors", half)
    resumed = luxc.load_state(tmp_path / "ckpt.safetensors", like=ts)
    assert resumed.step == 2
    _, resumed = _run(xla, resumed, 2, single_train_step)
    for a, b in zip(jax.tree.leaves((straight.parameters, straight.states)),
                    jax.tree.leaves((resumed.parameters, resumed.states)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_adaptors_print_in_the_lux_style_summary():
    text = repr(nn.Chain(_linen(), nn.Dense(3, 2), _eqx()))
    assert "layer_1 = FromFlax(LinenNet)," in text and "layer_3 = FromEquinox(EqxNet)," in text
    assert f"Total: {2 * CLOSED_FORM_COUNT + 3 * 2 + 2:_} parameters" in text


def test_an_in_place_step_leaves_the_users_module_usable():
    model = NnxNet(nnx.Rngs(0))
    model.eval()
    before = np.asarray(model(X))
    _train(luxc.AutoXLA(), nn.FromFlax(model))  # donates the TrainState's copies only
    np.testing.assert_array_equal(model(X), before)


def test_a_linen_module_without_sample_input_is_refused():
    with pytest.raises(TypeError, match="a linen module needs sample_input"):
        nn.FromFlax(LinenNet())


def test_a_module_of_another_framework_is_refused():
    with pytest.raises(TypeError, match="FromEquinox expects an equinox.Module; received NnxNet"):
        nn.FromEquinox(NnxNet(nnx.Rngs(0)))
    with pytest.raises(TypeError, match="FromFlax expects a flax.linen.Module or a flax.nnx.Module"):
        nn.FromFlax(nn.Dense(2, 2))


def test_a_missing_framework_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "equinox", None)  # `import equinox` now raises ImportError
    with pytest.raises(ImportError, match=r"FromEquinox needs equinox: pip install 'luxc\[equinox\]'"):
        nn.FromEquinox(None)
