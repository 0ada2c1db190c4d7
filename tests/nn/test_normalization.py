"""GroupNorm, InstanceNorm, LayerNorm's dims, RMSNorm and WeightNorm against numpy formulas
and Lux's own tests (issue 30).

References: Lux.jl 6f4b96c ``src/layers/normalize.jl`` (constructors, parameter and state
names, docstring printouts), ``test/core_layers/normalize_tests.jl`` (the checks cited per
test), LuxLib ``src/impl/normalization.jl`` (InstanceNorm's running statistics) and
``src/impl/layernorm.jl``.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import single_train_step
from tests.support import luxc_cli


def _rand(seed, *shape, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(np.float32)


def _normalised(x, axes, eps=1e-5):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_group_norm_is_the_per_sample_per_group_formula():
    layer = nn.GroupNorm(6, 3, jnp.tanh)
    ps, st = luxc.setup(0, layer)
    ps = {"scale": jnp.asarray(_rand(1, 6)), "bias": jnp.asarray(_rand(2, 6))}
    x = _rand(3, 2, 4, 5, 6, scale=3.0, shift=1.0)
    y, st2 = layer(jnp.asarray(x), ps, st)
    # groups of 2 contiguous channels: (N, H, W, G, C/G), statistics over H, W and C/G
    grouped = _normalised(x.reshape(2, 4, 5, 3, 2), (1, 2, 4)).reshape(x.shape)
    expected = np.tanh(grouped * np.asarray(ps["scale"]) + np.asarray(ps["bias"]))
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    assert st2 == {} and luxc.state_count(layer) == 0  # Lux: "plus 0 states"


def test_group_norm_defaults_and_bad_groups_follow_lux():
    # normalize_tests.jl: GroupNorm(4, 2) has bias zeros, scale ones; GroupNorm(5, 2) throws.
    ps, _ = luxc.setup(0, nn.GroupNorm(4, 2))
    np.testing.assert_array_equal(ps["scale"], np.ones(4))
    np.testing.assert_array_equal(ps["bias"], np.zeros(4))
    with pytest.raises(ValueError, match=r"groups must divide chs; received GroupNorm\(6, 4\) "
                                         r"— use groups in \[1, 2, 3, 6\]"):
        nn.GroupNorm(6, 4)
    with pytest.raises(nn.LayerShapeError, match=r"GroupNorm\(4, 2, affine=True\) expects 4 "):
        nn.GroupNorm(4, 2)(jnp.ones((3, 5)), ps, {})
    # Lux's enzyme_tests.jl: Chain(Dense(2, 4), GroupNorm(4, 2)) on a (features, batch) matrix.
    x = _rand(4, 3, 4)
    np.testing.assert_allclose(np.asarray(nn.GroupNorm(4, 2)(jnp.asarray(x), ps, {})[0]),
                               _normalised(x.reshape(3, 2, 2), (2,)).reshape(3, 4), atol=1e-5)


def test_lux_docstring_printouts_counts():
    # normalize.jl's jldoctests: 51_038 parameters; GroupNorm "plus 0 states", InstanceNorm
    # with affine "128 parameters, plus 1 non-trainable".
    gn = nn.Chain(nn.Dense(784, 64), nn.GroupNorm(64, 4, jax.nn.relu), nn.Dense(64, 10),
                  nn.GroupNorm(10, 5))
    inorm = nn.Chain(nn.Dense(784, 64), nn.InstanceNorm(64, jax.nn.relu, affine=True),
                     nn.Dense(64, 10), nn.InstanceNorm(10, jax.nn.relu, affine=True))
    assert luxc.parameter_count(gn) == luxc.parameter_count(inorm) == 51_038
    assert luxc.state_count(gn) == 0 and luxc.state_count(inorm) == 2
    text = repr(gn)
    assert "layer_2 = GroupNorm(64, 4, relu, affine=True)" in text and "# 128 parameters" in text


def test_instance_norm_normalises_each_sample_and_channel_over_space():
    layer = nn.InstanceNorm(3)
    ps, st = luxc.setup(0, layer)
    assert ps == {} and sorted(st) == ["training"]  # Lux: affine=false, track_stats=false
    x = _rand(5, 2, 4, 6, 3, scale=2.0, shift=-1.0)
    expected = _normalised(x, (1, 2))
    for state in (st, luxc.testmode(st)):  # no running statistics: both modes alike
        y, st2 = layer(jnp.asarray(x), ps, state)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
        assert st2 is state
    with pytest.raises(nn.LayerShapeError, match="with a spatial axis"):
        layer(jnp.ones((4, 3)), ps, st)


def test_instance_norm_running_statistics_follow_luxlib():
    layer = nn.InstanceNorm(2, affine=True, track_stats=True, momentum=0.3)
    ps, st = luxc.setup(0, layer)
    assert sorted(st) == ["running_mean", "running_var", "training"]
    x = _rand(6, 3, 5, 2, shift=2.0)
    _, st2 = layer(jnp.asarray(x), ps, st)
    # LuxLib update_normalization_statistics: batch-averaged instance statistics, the
    # variance corrected by S / (S - 1), S = 5 spatial positions.
    mean = x.mean(axis=1).mean(axis=0)
    var = x.var(axis=1).mean(axis=0) * 5 / 4
    np.testing.assert_allclose(np.asarray(st2["running_mean"]), 0.7 * 0 + 0.3 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(st2["running_var"]), 0.7 * 1 + 0.3 * var, rtol=1e-5)
    # Test mode normalises with the running statistics and keeps them.
    y, st3 = layer(jnp.asarray(x), ps, luxc.testmode(st2))
    rm, rv = np.asarray(st2["running_mean"]), np.asarray(st2["running_var"])
    np.testing.assert_allclose(np.asarray(y), (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-5, atol=1e-6)
    assert st3["running_mean"] is st2["running_mean"]


def test_layer_norm_default_keeps_samples_apart_and_all_is_luxs_colon():
    x = _rand(7, 2, 3, 3, 3, scale=2.0, shift=0.5)
    per_sample = nn.LayerNorm((3, 3, 3), affine=False)
    y, _ = per_sample(jnp.asarray(x), {}, {})
    np.testing.assert_allclose(np.asarray(y), _normalised(x, (1, 2, 3)), rtol=1e-5, atol=1e-5)
    # normalize_tests.jl: with Lux's default dims=Colon() and shapes (3,3,3), (1,3,1), (3,1,3)
    # the WHOLE array has mean 0 and std 1.
    for shape in ((3, 3, 3), (1, 3, 1), (3, 1, 3)):
        layer = nn.LayerNorm(shape, dims="all")
        ps, st = luxc.setup(0, layer)
        y, _ = layer(jnp.asarray(x), ps, st)
        assert abs(float(jnp.mean(y))) < 1e-3 and abs(float(jnp.std(y)) - 1) < 1e-2
        np.testing.assert_allclose(np.asarray(y), _normalised(x, (0, 1, 2, 3)), atol=1e-5)


def test_layer_norm_explicit_dims_and_errors():
    x = _rand(8, 4, 5, 6)
    layer = nn.LayerNorm(6, dims=1)  # Lux's dims=2 on a rank-3 array: the time axis
    ps, st = luxc.setup(0, layer)
    ps = {"scale": jnp.asarray(_rand(9, 6)), "bias": jnp.asarray(_rand(10, 6))}
    y, _ = layer(jnp.asarray(x), ps, st)
    expected = _normalised(x, (1,)) * np.asarray(ps["scale"]) + np.asarray(ps["bias"])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    assert layer.summary() == "LayerNorm(6, dims=(1,))"
    with pytest.raises(ValueError, match="dims must be 'sample', 'all', an axis or a tuple of "
                                         "axes; received 'batch'"):
        nn.LayerNorm(6, dims="batch")
    with pytest.raises(nn.LayerShapeError, match=r"dims \(3,\) are not axes of an input of rank 3"):
        nn.LayerNorm(6, dims=3)(jnp.asarray(x), ps, st)


def test_rms_norm_matches_luxs_test_formula():
    # normalize_tests.jl "RMSNorm": y ≈ x .* inv.(sqrt.(mean(abs2, x; dims=1))) .* scale,
    # here on the trailing axes; RMSNorm((2, 2)) on a (2, 2, 3) array normalises dims 1:2.
    layer = nn.RMSNorm(4)
    ps, st = luxc.setup(0, layer)
    np.testing.assert_array_equal(ps["scale"], np.ones(4))
    ps = {"scale": jnp.asarray(_rand(11, 4))}
    x = _rand(12, 5, 4)
    y, st2 = layer(jnp.asarray(x), ps, st)
    inv_rms = 1 / np.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), x * inv_rms * np.asarray(ps["scale"]), rtol=1e-5)
    assert st2 == {}
    two = nn.RMSNorm(2, 2, affine=False)
    assert luxc.setup(0, two)[0] == {} and nn.RMSNorm((2, 2)).shape == (2, 2)
    x3 = _rand(13, 3, 2, 2)
    inv_rms = 1 / np.sqrt((x3**2).mean(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(two(jnp.asarray(x3), {}, {})[0]), x3 * inv_rms,
                               rtol=1e-5)
    with pytest.raises(nn.LayerShapeError, match=r"RMSNorm\(\(4,\)\) expects an input of shape "
                                                 r"\(\.\.\., 4\); received \(5, 3\)"):
        layer(jnp.ones((5, 3)), ps, st)


def test_norms_of_a_bfloat16_input_keep_its_dtype_and_float32_statistics():
    x = _rand(14, 2, 4, 4, 8, scale=50.0, shift=300.0)  # a large mean: bf16 statistics drift
    for layer in (nn.GroupNorm(8, 2), nn.InstanceNorm(8), nn.RMSNorm(8)):
        ps, st = luxc.setup(0, layer)
        ref, _ = layer(jnp.asarray(x), ps, st)
        y, _ = layer(jnp.asarray(x, jnp.bfloat16), ps, st)
        assert y.dtype == jnp.float32 if isinstance(layer, nn.RMSNorm) else y.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), atol=0.1)


def test_weight_norm_reparameterises_and_starts_at_the_layer_weights():
    dense = nn.Dense(3, 4, jnp.tanh)
    wn = nn.WeightNorm(dense, ("weight", "bias"))
    ps, st = luxc.setup(0, wn)
    plain, _ = luxc.setup(0, dense)
    assert list(ps["normalized"]) == ["weight_g", "weight_v", "bias_g", "bias_v"]
    assert ps["unnormalized"] == {} and ps["normalized"]["weight_g"].shape == (1, 1)
    x = jnp.asarray(_rand(15, 6, 3))
    np.testing.assert_allclose(np.asarray(wn(x, ps, st)[0]), np.asarray(dense(x, plain, {})[0]),
                               rtol=1e-5)
    # w = g v / ||v||: any v, g give the layer's output with that weight.
    v, g = _rand(16, 4, 3), np.float32(2.5)
    ps["normalized"]["weight_v"], ps["normalized"]["weight_g"] = jnp.asarray(v), jnp.full((1, 1), g)
    w = g * v / (np.sqrt((v**2).sum()) + np.finfo(np.float32).eps)
    bias = np.asarray(ps["normalized"]["bias_v"])
    np.testing.assert_allclose(np.asarray(wn(x, ps, st)[0]), np.tanh(np.asarray(x) @ w.T + bias),
                               rtol=1e-5, atol=1e-6)


def test_weight_norm_dims_keep_axes_and_its_gradient_matches_finite_differences():
    wn = nn.WeightNorm(nn.Dense(3, 2), ("weight",), (0,))  # Lux's dims=(1,): one g per output
    ps, st = luxc.setup(0, wn)
    assert ps["normalized"]["weight_g"].shape == (2, 1) and sorted(ps["unnormalized"]) == ["bias"]
    x = jnp.asarray(_rand(17, 5, 3))
    f = lambda p: jnp.sum(wn(x, p, st)[0] ** 2)
    grad = jax.grad(f)(ps)["normalized"]["weight_v"]
    base, h = jax.tree.map(lambda a: np.asarray(a, np.float64), ps), 1e-3
    for i, j in ((0, 0), (1, 2)):
        up = jax.tree.map(np.copy, base)
        down = jax.tree.map(np.copy, base)
        up["normalized"]["weight_v"][i, j] += h
        down["normalized"]["weight_v"][i, j] -= h
        fd = (float(f(jax.tree.map(jnp.float32, up))) - float(f(jax.tree.map(jnp.float32, down)))) / (2 * h)
        np.testing.assert_allclose(float(grad[i, j]), fd, rtol=2e-2, atol=2e-3)


def test_weight_norm_refuses_zero_parameters_and_unknown_names():
    # normalize_tests.jl "Normalizing Zero Parameters": Conv with init_bias=zeros32 and
    # (:weight, :bias) throws at setup; (:weight,) alone is fine.
    zeros = lambda key, shape, dtype: jnp.zeros(shape, dtype)
    conv = nn.Conv((3, 3), 3, 3)
    conv.init_bias = zeros
    with pytest.raises(ValueError, match="parameter 'bias' of Conv.* is all zeros"):
        luxc.setup(0, nn.WeightNorm(conv, ("weight", "bias")))
    luxc.setup(0, nn.WeightNorm(conv, ("weight",)))
    with pytest.raises(ValueError, match=r"names 'kernel', which is not an array parameter of "
                                         r"Dense\(3 => 2\); its arrays are \['bias', 'weight'\]"):
        nn.WeightNorm(nn.Dense(3, 2), ("kernel",))


def _norm_model():
    return nn.Chain(
        nn.Conv((3, 3), 2, 6, pad=1), nn.GroupNorm(6, 3, jax.nn.relu),
        nn.InstanceNorm(6, affine=True, track_stats=True), nn.FlattenLayer(),
        nn.WeightNorm(nn.Dense(6 * 16, 8), ("weight",), (0,)), nn.RMSNorm(8),
        nn.LayerNorm(8, jnp.tanh), nn.Dense(8, 1))


def _norm_data():
    return (jnp.asarray(_rand(20, 4, 4, 4, 2)), jnp.asarray(_rand(21, 4, 1)))


def _norm_steps(backend, ts, n=3):
    losses = []
    for _ in range(n):
        _, loss, _, ts = single_train_step(backend, luxc.MSELoss(), _norm_data(), ts)
        losses.append(float(loss))
    return losses, ts


@pytest.fixture(scope="module")
def norm_runs():
    """3 eager and 3 compiled steps from one initial TrainState, once for the module; every
    TrainState made from it shares its compiled step."""
    ps, st = luxc.setup(0, _norm_model())
    start = luxc.TrainState(_norm_model(), ps, st, optax.adam(1e-2))
    return start, _norm_steps(luxc.AutoJAX(), start), _norm_steps(luxc.AutoXLA(), start)


def test_norm_layers_compiled_step_equals_eager_and_bf16_is_close_to_f32(norm_runs):
    data = _norm_data()
    _, (eager, ts_e), (compiled, ts) = norm_runs
    np.testing.assert_allclose(eager, compiled, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 (ts_e.parameters, ts_e.states), (ts.parameters, ts.states))
    assert eager[-1] < eager[0]
    opts = luxc.CompileOptions(mixed_precision="bf16")
    _, loss, _, ts2 = single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts,
                                        compile_options=opts)
    _, loss_f32, _, _ = single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
    # bf16 keeps 8 bits of mantissa: the same step's loss within a few bf16 ulps of float32's
    np.testing.assert_allclose(float(loss), float(loss_f32), rtol=2e-2)
    assert ts2.parameters["layer_6"]["scale"].dtype == jnp.float32
    assert ts2.states["layer_3"]["running_mean"].dtype == jnp.float32


def test_norm_layers_checkpoint_and_artifact_round_trip(tmp_path, norm_runs):
    start, (eager, _), (_, ts) = norm_runs
    step = lambda t: single_train_step(luxc.AutoXLA(), luxc.MSELoss(), _norm_data(), t)
    luxc.save_state(tmp_path / "c.safetensors", ts)
    # `like` holds the initial values (a load that kept them would fail) and shares the
    # compiled step.
    resumed = luxc.load_state(tmp_path / "c.safetensors", like=start)
    a, b = step(ts)[3], step(resumed)[3]
    for u, v in zip(jax.tree.leaves((a.parameters, a.states)), jax.tree.leaves((b.parameters, b.states))):
        np.testing.assert_array_equal(u, v)
    # An artifact of a model holding every new norm, exported here, run by `luxc run` in a
    # fresh process that cannot import this module.
    luxc.export_step(luxc.MSELoss(), _norm_data(), start, tmp_path / "step.luxc")
    r = luxc_cli("run", "step.luxc", "--steps", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    losses = [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("step")]
    np.testing.assert_allclose(losses, eager, rtol=1e-4)


def _stack_equals_slices_in_turn(block, x, calls=2):
    stack = nn.Stack(block, 3)
    ps, st = luxc.setup(0, stack)
    for _ in range(calls):  # a second call uses the state the first returned
        y, new_st = stack(x, ps, st)
        h, slices = x, []
        for i in range(3):
            h, s = block(h, *(jax.tree.map(lambda a, i=i: a[i], t) for t in (ps, st)))
            slices.append(s)
        np.testing.assert_allclose(np.asarray(y), np.asarray(h), rtol=1e-5, atol=1e-5)
        for i, s in enumerate(slices):
            jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5,
                                                                      atol=1e-6), new_st, s)
        st = new_st


def test_norm_layers_inside_a_stack_equal_the_slices_applied_in_turn():
    block = nn.Chain(nn.WeightNorm(nn.Dense(8, 8), ("weight",)), nn.RMSNorm(8),
                     nn.GroupNorm(8, 2), nn.LayerNorm(8, jnp.tanh))
    _stack_equals_slices_in_turn(block, jnp.asarray(_rand(30, 4, 8)))
    spatial = nn.Chain(nn.InstanceNorm(8, affine=True, track_stats=True), nn.GroupNorm(8, 4))
    _stack_equals_slices_in_turn(spatial, jnp.asarray(_rand(31, 2, 5, 8)))


@pytest.mark.parametrize("make,message", [
    (lambda: nn.GroupNorm(0, 1), "GroupNorm: chs must be a positive int; received 0"),
    (lambda: nn.InstanceNorm(3, momentum=2.0), r"InstanceNorm: momentum must be in \[0, 1\]"),
    (lambda: nn.RMSNorm(4, 0), r"RMSNorm: shape must be a positive int or a tuple of positive "
                               r"ints; received \(4, 0\)"),
    (lambda: nn.LayerNorm((3, -1)), "LayerNorm: shape must be a positive int"),
    (lambda: nn.WeightNorm(nn.Dense(2, 2), ("weight",), (0, 1)),
     r"WeightNorm: dims needs one entry per name in which_params \('weight',\)"),
    (lambda: nn.WeightNorm(nn.Dense(2, 2), ("weight",), (2,)),
     r"WeightNorm: dims\[0\] must be axes of 'weight' \(rank 2\); received 2"),
])
def test_bad_norm_configuration_is_one_line_naming_the_argument(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)
