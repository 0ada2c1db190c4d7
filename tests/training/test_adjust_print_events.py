"""The rest of Lux's training surface: ``adjust`` on any optax optimiser, ``print(ts)`` and the
"Train Step" trace events (Lux.jl ``src/helpers/training.jl``, ``src/helpers/optimizers.jl``,
``ext/ReactantExt/training.jl``)."""

import gzip
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import adjust, adjust_, single_train_step, single_train_step_
from tests.passes._inputs import normal

OPTIMISERS = {
    "adam": lambda lr: optax.adam(lr),
    "sgd_momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adamw": lambda lr: optax.adamw(lr, weight_decay=0.1),
    "clipped_adam": lambda lr: optax.chain(optax.clip_by_global_norm(0.05), optax.adam(lr)),
    "adam_array_rate": lambda lr: optax.adam(jnp.asarray(lr, jnp.float32)),
}


def _problem():
    model = nn.Chain(nn.Dense(3, 8, jax.nn.tanh), nn.Dense(8, 2))
    ps, st = luxc.setup(jax.random.key(0), model)
    x = normal(1, (16, 3))
    y = normal(2, (16, 2))
    return model, ps, st, (x, y)


def _loss(model, st, data):
    x, y = data
    return lambda p: jnp.mean(jnp.square(model(x, p, st)[0] - y))


def _close(a, b, rtol=2e-5, atol=2e-6):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", OPTIMISERS)
def test_adjust_gives_a_fresh_optimizers_update_without_recompiling(name):
    # Lux: Optimisers.adjust!(ts, eta) changes eta of every rule of the chain that has one.
    make = OPTIMISERS[name]
    model, ps, st, data = _problem()
    ts = luxc.TrainState(model, ps, st, make(0.01))
    _, _, _, ts = single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
    misses = luxc.cache_info(ts).misses
    adjusted = adjust(ts, 0.05)
    _, _, _, after = single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, adjusted)
    assert luxc.cache_info(after).misses == misses

    # optax alone: one step at 0.01, then a fresh optimiser at 0.05 continues from its state
    grad = jax.grad(_loss(model, st, data))
    opt = make(0.01)
    u1, state = opt.update(grad(ps), opt.init(ps), ps)
    p1 = optax.apply_updates(ps, u1)
    u2, _ = make(0.05).update(grad(p1), state, p1)
    _close(ts.parameters, p1)
    _close(jax.tree.map(jnp.subtract, after.parameters, ts.parameters), u2, rtol=1e-4, atol=2e-6)
    assert float(adjusted.optimizer_state[-1]["learning_rate"]) == pytest.approx(0.05)
    assert float(ts.optimizer_state[-1]["learning_rate"]) == pytest.approx(0.01)  # ts unchanged


def test_adjust_every_iteration_of_a_compiled_loop_as_lux_examples_do():
    # Lux's CIFAR10 / PINN2DPDE examples: `Optimisers.adjust!(train_state, lr_schedule(iter))`
    # before each `single_train_step!` (examples/CIFAR10/common.jl, examples/PINN2DPDE/main.jl).
    model, ps, st, data = _problem()
    rates = [1e-2 * 0.5 ** i for i in range(6)]
    ts = luxc.TrainState(model, ps, st, optax.adamw(rates[0], weight_decay=1e-2))
    for i, rate in enumerate(rates):
        # An optax schedule's value is a 0-d array: accepted as the number it holds.
        adjust_(ts, jnp.asarray(rate, jnp.float32) if i % 2 else rate)
        _, _, _, ts = single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
        assert luxc.cache_info(ts).misses == 1, f"iteration {i} recompiled"

    # optax's own device-scalar hyperparameters, set before each step
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=rates[0], weight_decay=1e-2)
    state, p = opt.init(ps), ps
    for rate in rates:
        state.hyperparams["learning_rate"] = jnp.asarray(rate)
        updates, state = opt.update(jax.grad(_loss(model, st, data))(p), state, p)
        p = optax.apply_updates(p, updates)
    _close(ts.parameters, p)
    assert ts.step == len(rates)


def test_adjust_in_place_changes_the_state_every_sharer_sees():
    model, ps, st, _ = _problem()
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    assert adjust_(ts, 0.2) is ts
    assert float(ts.optimizer_state[-1]["learning_rate"]) == pytest.approx(0.2)


def test_an_unadjusted_optimizer_trains_as_optax_does():
    model, ps, st, data = _problem()
    ts = luxc.TrainState(model, ps, st, optax.adam(0.01))
    opt, p = optax.adam(0.01), ps
    state = opt.init(ps)
    for _ in range(3):
        _, _, _, ts = single_train_step_(luxc.AutoJAX(), luxc.MSELoss(), data, ts)
        updates, state = opt.update(jax.grad(_loss(model, st, data))(p), state, p)
        p = optax.apply_updates(p, updates)
    _close(ts.parameters, p, rtol=1e-6, atol=1e-7)
    _close(ts.optimizer_state[:-1], state, rtol=1e-6, atol=1e-7)


def test_a_hyperparameter_that_cannot_be_adjusted_is_named_in_one_line():
    model, ps, st, _ = _problem()
    cases = [
        (optax.adam(1e-3), {"b1": 0.5}, "b1 of this optimizer is a constant inside it"),
        (optax.sgd(optax.exponential_decay(0.1, 10, 0.5)), {"learning_rate": 0.1},
         "its learning rate is optax.scale_by_schedule"),
        (optax.scale_by_adam(), {"learning_rate": 0.1}, "found no constant learning rate"),
    ]
    for optimizer, change, message in cases:
        ts = luxc.TrainState(model, ps, st, optimizer)
        with pytest.raises(ValueError, match=message) as info:
            adjust(ts, **change)
        assert "\n" not in str(info.value) and "optax.inject_hyperparams" in str(info.value)


def test_print_shows_what_lux_trainstate_shows():
    model = nn.Chain(nn.Dense(2, 4, jax.nn.relu), nn.BatchNorm(4), nn.Dense(4, 1))
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    data = (jnp.ones((4, 2)), jnp.ones((4, 1)))
    _, _, _, ts = single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
    lines = str(ts).splitlines()
    assert lines[:10] == [
        "TrainState(",
        "    Chain(",
        "        layer_1 = Dense(2 => 4, relu),  # 12 parameters",
        "        layer_2 = BatchNorm(4),         # 8 parameters",
        "        layer_3 = Dense(4 => 1),        # 5 parameters",
        "    ),",
        "    number of parameters: 25",  # 2·4+4 + 4+4 + 4+1
        "    number of states: 9",  # running mean 4, running variance 4, training 1
        "    optimizer: optax chain (states: ScaleByAdamState), learning_rate=0.001 (adjustable)",
        "    step: 1",
    ]
    assert re.fullmatch(r"    cache: ExecutableCache\(0 hits, 1 miss, 1 entry, \d+\.\d\ds compiling\)",
                        lines[10])
    assert lines[11:] == ["    objective_function: MSELoss", ")"]


def _trace_events(directory) -> list[dict]:
    (path,) = directory.glob("plugins/profile/*/perfetto_trace.json.gz")
    with gzip.open(path) as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def test_each_compiled_training_call_is_one_train_step_event(tmp_path):
    model, ps, st, data = _problem()
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(3):
            _, _, _, ts = single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
        jax.block_until_ready(ts.parameters)
    events = _trace_events(tmp_path)
    steps = [e["args"]["step_num"] for e in events if e.get("name") == "Train Step"]
    assert steps == ["0", "1", "2"]
    assert sum(e.get("name") == "Compile Train Step" for e in events) == 1


def test_porting_aliases_name_luxcs_backends():
    assert luxc.AutoReactant is luxc.AutoXLA and luxc.AutoEnzyme is luxc.AutoXLA
    assert luxc.AutoZygote is luxc.AutoJAX
    model, ps, st, data = _problem()
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    _, loss, _, _ = single_train_step(luxc.AutoZygote(), luxc.MSELoss(), data, ts)
    assert float(loss) == pytest.approx(float(_loss(model, st, data)(ps)), rel=1e-6)


def _adam_state(key):
    model = luxc.nn.Dense(2, 1)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    return luxc.TrainState(model, *luxc.setup(key, model), opt)


def _lr(ts):
    return pytest.approx(float(ts.optimizer_state.hyperparams["learning_rate"]), rel=1e-6)


def test_adjust_takes_the_learning_rate_positionally(key):
    # Lux.jl src/helpers/training.jl: Optimisers.adjust!(ts::TrainState, eta::Real) and
    # Optimisers.adjust(ts::TrainState, eta::Real).
    ts = _adam_state(key)
    assert _lr(luxc.training.adjust(ts, 1e-3)) == 1e-3 and _lr(ts) == 0.1
    assert luxc.training.adjust_(ts, 0.5) is ts and _lr(ts) == 0.5
    with pytest.raises(TypeError, match="given twice"):
        luxc.training.adjust(ts, 1e-3, learning_rate=1e-2)


def test_adjust_in_place_is_all_or_nothing(key):
    ts = _adam_state(key)
    earlier = ts.replace(step=3)  # shares the optimiser state
    with pytest.raises(ValueError, match="no hyperparameter 'momentum'"):
        luxc.training.adjust_(ts, 1e-3, b1=0.5, momentum=0.9)
    with pytest.raises(TypeError):
        luxc.training.adjust_(ts, b1=0.5, b2="fast")
    for t in (ts, earlier):
        assert _lr(t) == 0.1 and float(t.optimizer_state.hyperparams["b1"]) == pytest.approx(0.9)
