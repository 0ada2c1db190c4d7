"""What an artifact's manifest says about the step (what `luxc inspect` shows): the objective,
the optimiser, and every input named by its path."""

from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import luxc
from luxc.export import describe_objective, describe_optimizer, flat_step


def objective(model, ps, st, data):
    y, st = model(data[0], ps, st)
    return jnp.mean((y - data[1]) ** 2), st, {}


def _state(optimizer):
    model = luxc.nn.Chain(luxc.nn.Dense(3, 4), luxc.nn.BatchNorm(4))
    ps, st = luxc.setup(0, model)
    return luxc.TrainState(model, ps, st, optimizer)


def test_a_loss_object_is_recorded_by_its_repr_and_a_function_by_name_and_place():
    assert describe_objective(luxc.HuberLoss(delta=0.5)) == repr(luxc.HuberLoss(delta=0.5))
    line = objective.__code__.co_firstlineno
    assert describe_objective(objective) == f"objective ({Path(__file__).name}:{line})"


def test_the_optimizer_is_named_by_its_state_and_hyperparameters():
    params = {"w": jnp.ones(2)}
    adam = optax.adam(1e-3)
    assert describe_optimizer(adam, adam.init(params)) == "optax chain (states: ScaleByAdamState)"
    momentum = optax.sgd(0.1, momentum=0.9)
    assert "TraceState" in describe_optimizer(momentum, momentum.init(params))
    injected = optax.inject_hyperparams(optax.adam)(learning_rate=3e-3)
    text = describe_optimizer(injected, injected.init(params))
    assert text.startswith("optax inject_hyperparams") and "learning_rate=0.003" in text


def test_inputs_are_named_parameters_optimizer_state_states_and_data():
    ts = _state(optax.adam(1e-3))
    data = (jnp.ones((5, 3)), jnp.ones((5, 4)))
    layout = flat_step(objective, data, ts)[3]
    names = layout["state_names"]
    assert names[:2] == ["parameters['layer_1']['bias']", "parameters['layer_1']['weight']"]
    assert "optimizer_state[0].mu['layer_2']['scale']" in names
    assert names[-2:] == ["states['layer_2']['running_mean']", "states['layer_2']['running_var']"]
    assert len(names) == len(jax.tree.leaves((ts.parameters, ts.optimizer_state, ts.states)))
    assert layout["data_names"] == ["data[0]", "data[1]"]
    assert layout["objective"].startswith("objective (") and "ScaleByAdamState" in layout["optimizer"]
