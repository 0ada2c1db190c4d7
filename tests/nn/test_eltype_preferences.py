"""Layers, preferences and LuxCore helpers against Lux.jl's source (issue 11, items 3 and 9).

References: Lux.jl ``src/helpers/match_eltype.jl`` (the six pairs; ``maxlog = 1`` in
``src/utils.jl``'s ``warn_mismatch``), ``src/layers/basic.jl``, ``conv.jl``, ``normalize.jl``
(each calls ``match_eltype``), ``src/preferences.jl`` (``set_dispatch_doctor_preferences!``),
``src/extended_ops.jl`` and ``src/layers/recurrent.jl`` (``eachslice`` orderings),
``src/helpers/losses.jl`` (``L1Loss``/``L2Loss``), LuxCore ``src/stateful.jl`` and
``src/LuxCore.jl`` (``trainmode``/``testmode``/``update_state``); the seed
``lux-training-utilities.md`` (Element Type Matching, Miscellaneous).
"""

import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import luxc
from luxc import nn, ops


def test_dense_converts_float32_input_for_float16_parameters(prefs, key):
    # Seed table: Float16 parameters ← Float32 input → converted to Float16 under "convert".
    prefs(eltype_mismatch_handling="convert")
    layer = nn.Dense(3, 2, dtype=jnp.float16)
    ps, st = luxc.setup(key, layer)
    with pytest.warns(UserWarning, match="float16 parameters and states received float32 input"):
        y, _ = layer(jnp.ones((4, 3), jnp.float32), ps, st)
    assert y.dtype == jnp.float16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn_mismatch has maxlog = 1
        layer(jnp.ones((4, 3), jnp.float32), ps, st)


@pytest.mark.parametrize("make", [lambda: nn.Conv((3,), 2, 4), lambda: nn.BatchNorm(2),
                                  lambda: nn.LayerNorm(2), lambda: nn.Dense(2, 2)])
def test_layers_call_match_eltype_on_integer_input(prefs, make, key):
    # match_eltype.jl: Float32 ← Integer is one of the six pairs; basic.jl, conv.jl,
    # normalize.jl call it on the input.
    prefs(eltype_mismatch_handling="error")
    layer = make()
    ps, st = luxc.setup(key, layer)
    with pytest.raises(luxc.nn.EltypeMismatchError, match="float32 parameters and states "
                                                          "received int32 input"):
        layer(jnp.ones((2, 5, 2), jnp.int32), ps, st)


def test_pairs_outside_lux_table_pass(prefs, key):
    # bfloat16 input to float32 parameters is not in the seed's table: no error, no change.
    prefs(eltype_mismatch_handling="error")
    layer = nn.Dense(2, 2)
    ps, st = luxc.setup(key, layer)
    x = jnp.ones((1, 2), ml_dtypes.bfloat16)
    assert luxc.match_eltype(layer, ps, st, x) is x
    layer(x, ps, st)


def test_set_dispatch_doctor_preferences_sets_both_levels(prefs):
    # preferences.jl: set_dispatch_doctor_preferences!(mode) = (; luxcore=mode, luxlib=mode).
    luxc.set_dispatch_doctor_preferences("warn")
    assert luxc.preference("instability_check_luxcore") == "warn"
    assert luxc.preference("instability_check_luxlib") == "warn"
    luxc.set_dispatch_doctor_preferences(luxcore="error")
    assert luxc.preference("instability_check_luxcore") == "error"
    assert luxc.preference("instability_check_luxlib") == "disable"
    with pytest.raises(ValueError, match="luxlib must be 'disable', 'warn' or 'error'; received"):
        luxc.set_dispatch_doctor_preferences(luxlib="loud")


def test_type_instability_of_a_layer_is_caught_at_trace_time(prefs, key):
    luxc.set_dispatch_doctor_preferences(luxcore="error")
    layer = nn.Dense(3, 2, dtype=ml_dtypes.bfloat16)
    ps, st = luxc.setup(key, layer)
    with pytest.raises(luxc.nn.TypeInstabilityError,
                       match=r"Dense\(3 => 2\): an output is float32 where bfloat16 was expected"):
        jax.jit(layer)(jnp.ones((1, 3), jnp.float32), ps, st)
    layer(jnp.ones((1, 3), ml_dtypes.bfloat16), ps, st)  # stable: no error

    weak = nn.WrappedFunction(lambda x: jnp.asarray(0.5))
    with pytest.raises(luxc.nn.TypeInstabilityError, match="an output is weak-typed float32"):
        weak(jnp.ones(2), {}, {})


def test_type_instability_of_a_loss_is_a_warning_in_warn_mode(prefs):
    luxc.set_dispatch_doctor_preferences(luxlib="warn")
    loss = luxc.GenericLossFunction(lambda a, b: (a.astype(jnp.float32) - b) ** 2)
    with pytest.warns(UserWarning, match="GenericLossFunction: an output is float32 where "
                                         "float16 was expected"):
        loss(jnp.ones(3, jnp.float16), jnp.zeros(3, jnp.float16))


def test_stateful_layer_trainmode_testmode_and_update_state(key):
    # LuxCore stateful.jl: trainmode/testmode/update_state on a StatefulLuxLayer return a new
    # StatefulLuxLayer over LuxCore.trainmode/testmode/update_state of its state.
    model = nn.Chain(nn.Dense(2, 2), nn.Dropout(0.5))
    ps, st = luxc.setup(key, model)
    f = luxc.StatefulLuxLayer(model, ps, st)
    g = luxc.testmode(f)
    assert isinstance(g, luxc.StatefulLuxLayer) and g.ps is ps
    assert not g.st["layer_2"]["training"] and f.st["layer_2"]["training"]
    x = jnp.ones((3, 2))
    np.testing.assert_array_equal(g(x), model[0](x, ps["layer_1"], {})[0])  # dropout off
    assert luxc.trainmode(g).st["layer_2"]["training"]
    h = luxc.update_state(f, "training", luxc.Val(False))
    assert h.st["layer_2"]["training"] == luxc.Val(False)
    assert luxc.update_state({"a": {"rate": 1}, "rate": 2}, "rate", 0) == {"a": {"rate": 0},
                                                                           "rate": 0}


def test_eachslice_rnn_orderings():
    # recurrent.jl: eachslice(x, BatchLastIndex()) slices Julia dim ndims-1 ((features, time,
    # batch)), TimeLastIndex() dim ndims ((features, batch, time)); Julia's dim k is axis
    # ndim - k in luxc's row-major layout.
    x = jnp.arange(2 * 5 * 3).reshape(2, 5, 3)  # (batch, time, features)
    steps = ops.eachslice(x, ops.BatchLastIndex())
    assert len(steps) == 5 and steps[1].shape == (2, 3)
    np.testing.assert_array_equal(steps[1], x[:, 1, :])
    time_major = ops.eachslice(jnp.swapaxes(x, 0, 1), ops.TimeLastIndex())
    np.testing.assert_array_equal(time_major[1], x[:, 1, :])
    unbatched = ops.eachslice(x[0], ops.BatchLastIndex())  # (time, features): a matrix
    assert len(unbatched) == 5


@pytest.mark.parametrize("activation,gain", [(None, 1.0), (jax.nn.relu, 2.0), (jnp.tanh, 5 / 3)])
def test_default_weight_init_is_lux_kaiming_uniform(activation, gain, key):
    # Lux.jl src/layers/basic.jl and conv.jl: kaiming_uniform(...; gain=calculate_gain(σ, √5))
    # (src/utils.jl: identity 1, relu 2, tanh 5/3); WeightInitializers kaiming_uniform:
    # bound = √3 * gain / √fan_in. The bias: U(±1/√fan_in).
    fan_in = 16
    for layer, shape in ((nn.Dense(fan_in, 4000, activation), (4000, fan_in)),
                         (nn.Conv((2, 2), 4, 1000, activation), (2, 2, 4, 1000))):
        ps, _ = luxc.setup(key, layer)
        bound = np.sqrt(3) * gain / np.sqrt(fan_in)
        w = np.abs(np.asarray(ps["weight"]))
        assert ps["weight"].shape == shape and w.max() <= bound and w.max() > 0.99 * bound
        b = np.abs(np.asarray(ps["bias"]))
        assert b.max() <= 1 / np.sqrt(fan_in) and b.max() > 0.9 / np.sqrt(fan_in)
