"""AutoXLA: the compiled step equals the eager one, and the cache behaves as documented."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import compute_gradients, compute_objective, single_train_step, single_train_step_
from tests.runtime._random import normal, one_hot_labels

XLA, EAGER = luxc.AutoXLA(), luxc.AutoJAX()


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _state(model, key=jax.random.key(0), opt=None):
    # SGD with momentum unless a test asks for another optimiser: a state per parameter to
    # update and donate, compiled in 3/4 of Adam's time.
    ps, st = luxc.setup(key, model)
    return luxc.TrainState(model, ps, st, opt or optax.sgd(1e-2, momentum=0.9))


def _mlp():
    return nn.Chain(nn.Dense(4, 16, jax.nn.relu), nn.Dense(16, 3))


def _data(n=8, d=4, k=3):
    return normal(1, (n, d)), one_hot_labels(2, n, k)


MODELS = {
    "dense": (_mlp, lambda: _data()),
    "conv": (lambda: nn.Chain(nn.Conv((3, 3), 1, 4, jax.nn.relu), nn.MaxPool((2, 2)),
                              nn.FlattenLayer(), nn.Dense(4 * 3 * 3, 3)),
             lambda: (normal(3, (8, 8, 8, 1)), _data()[1])),
    # No bias before BatchNorm: its true gradient is 0, and Adam would amplify rounding noise.
    "batchnorm": (lambda: nn.Chain(nn.Dense(4, 16, use_bias=False), nn.BatchNorm(16, jax.nn.relu),
                                   nn.Dense(16, 3)),
                  lambda: _data()),
    "dropout": (lambda: nn.Chain(nn.Dense(4, 16, jax.nn.relu), nn.Dropout(0.3), nn.Dense(16, 3)),
                lambda: _data()),
    "layernorm": (lambda: nn.Chain(nn.Dense(4, 16), nn.LayerNorm(16), nn.Dense(16, 3)),
                  lambda: _data()),
}


@pytest.mark.parametrize("name", MODELS)
def test_compiled_step_equals_eager_step(name):
    make_model, make_data = MODELS[name]
    ts, data = _state(make_model(), opt=optax.adam(1e-2)), make_data()  # Adam's richer state
    loss_fn = luxc.CrossEntropyLoss(logits=True)
    g1, l1, _, ts1 = single_train_step(EAGER, loss_fn, data, ts)
    g2, l2, _, ts2 = single_train_step(XLA, loss_fn, data, ts)
    assert float(l1) == pytest.approx(float(l2), rel=1e-5)
    _close(g1, g2)
    _close(ts1.parameters, ts2.parameters)
    _close(ts1.states, ts2.states)
    _close(ts1.optimizer_state, ts2.optimizer_state)
    assert ts2.step == 1


LOSSES = [luxc.MSELoss(), luxc.MAELoss(), luxc.MSLELoss(), luxc.HuberLoss(), luxc.HingeLoss(),
          luxc.SquaredHingeLoss(), luxc.PoissonLoss(), luxc.SiameseContrastiveLoss(),
          luxc.BinaryCrossEntropyLoss(), luxc.BinaryCrossEntropyLoss(logits=True, label_smoothing=0.1),
          luxc.BinaryFocalLoss(), luxc.CrossEntropyLoss(), luxc.CrossEntropyLoss(logits=True),
          luxc.FocalLoss(), luxc.KLDivergenceLoss(), luxc.DiceCoeffLoss(),
          luxc.GenericLossFunction(lambda p, y: jnp.abs(p - y) ** 3)]


@pytest.fixture(scope="module")
def softmax_mlp():
    """One TrainState for every loss: its cache compiles the eager step's optimiser update once,
    and each loss's compiled step (a program of its own) on first use."""
    return _state(nn.Chain(nn.Dense(4, 16, jax.nn.relu), nn.Dense(16, 3), jax.nn.softmax))


# Each loss is a new objective to the shared TrainState's cache: the warning says so.
@pytest.mark.filterwarnings("ignore::luxc.runtime.NewObjectiveWarning")
@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
def test_every_loss_compiles_to_the_eager_result(softmax_mlp, loss_fn):
    ts, data = softmax_mlp, _data()
    options = luxc.CompileOptions(passes="all")
    g1, l1, _, ts1 = single_train_step(EAGER, loss_fn, data, ts)
    g2, l2, _, ts2 = single_train_step(XLA, loss_fn, data, ts, compile_options=options)
    assert float(l1) == pytest.approx(float(l2), rel=1e-5, abs=1e-7)
    _close(g1, g2, rtol=1e-4, atol=1e-6)
    _close(ts1.parameters, ts2.parameters, rtol=1e-4, atol=1e-6)


def test_one_compile_then_hits():
    ts, data = _state(_mlp()), _data()
    for _ in range(5):
        _, _, _, ts = single_train_step_(XLA, luxc.MSELoss(), data, ts)
    info = luxc.cache_info(ts)
    assert (info.misses, info.hits, info.entries) == (1, 4, 1)
    assert info.compile_seconds > 0


def test_a_new_shape_recompiles_once_and_both_entries_share_the_parameters():
    ts, data = _state(_mlp()), _data()
    small = (data[0][:3], data[1][:3])
    for batch in (data, small, data, small, data):
        _, _, _, ts = single_train_step_(XLA, luxc.MSELoss(), batch, ts)
    info = luxc.cache_info(ts)
    assert (info.misses, info.entries, info.hits) == (2, 2, 3)


def test_new_compile_options_recompile_and_equal_ones_hit():
    ts, data = _state(_mlp()), _data()
    for options in (None, luxc.CompileOptions(precision="highest"),
                    luxc.CompileOptions(precision="highest"), None):
        single_train_step(XLA, luxc.MSELoss(), data, ts, compile_options=options)
    assert (luxc.cache_info(ts).misses, luxc.cache_info(ts).hits) == (2, 2)


def test_return_gradients_false_is_its_own_program_and_returns_none():
    ts, data = _state(_mlp()), _data()
    grads, _, _, _ = single_train_step(XLA, luxc.MSELoss(), data, ts, return_gradients=False)
    assert grads is None
    without = luxc.compile_step(luxc.MSELoss(), data, ts, return_gradients=False)
    with_grads = luxc.compile_step(luxc.MSELoss(), data, ts)
    n_params = len(jax.tree.leaves(ts.parameters))
    assert without.executable.compiled.out_tree.num_leaves == \
        with_grads.executable.compiled.out_tree.num_leaves - n_params


def test_adjusting_the_learning_rate_does_not_recompile():
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    ts, data = _state(_mlp(), opt=opt), _data()
    _, _, _, ts = single_train_step_(XLA, luxc.MSELoss(), data, ts)
    for lr in (1e-3, 1e-4, 3e-4):
        ts = luxc.training.adjust(ts, learning_rate=lr)
        _, _, _, ts = single_train_step_(XLA, luxc.MSELoss(), data, ts)
    assert luxc.cache_info(ts).misses == 1
    assert float(ts.optimizer_state.hyperparams["learning_rate"]) == pytest.approx(3e-4)


def test_a_schedule_does_not_recompile_every_step():
    opt = optax.adam(optax.exponential_decay(1e-2, 1, 0.5))
    ts, data = _state(_mlp(), opt=opt), _data()
    for _ in range(4):
        _, _, _, ts = single_train_step_(XLA, luxc.MSELoss(), data, ts)
    assert luxc.cache_info(ts).misses == 1


def test_adjusted_learning_rate_changes_the_compiled_update():
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    ts, data = _state(_mlp(), opt=opt), _data()
    _, _, _, fast = single_train_step(XLA, luxc.MSELoss(), data, ts)
    _, _, _, slow = single_train_step(XLA, luxc.MSELoss(), data, luxc.training.adjust(ts, learning_rate=0.01))
    d_fast = fast.parameters["layer_2"]["bias"] - ts.parameters["layer_2"]["bias"]
    d_slow = slow.parameters["layer_2"]["bias"] - ts.parameters["layer_2"]["bias"]
    np.testing.assert_allclose(d_slow, d_fast / 10, rtol=1e-5)


def test_compute_objective_compiles_once_and_matches_eager():
    model = nn.Chain(nn.Dense(4, 16), nn.BatchNorm(16), nn.Dense(16, 3))
    ts, data = _state(model), _data()
    ts = ts.replace(states=luxc.testmode(ts.states))
    expected, _, _ = compute_objective(EAGER, luxc.MSELoss(), data, ts)
    for _ in range(3):
        loss, st, stats = compute_objective(XLA, luxc.MSELoss(), data, ts)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert (luxc.cache_info(ts).misses, luxc.cache_info(ts).hits) == (1, 2)


def test_compute_gradients_compiled_equals_eager():
    ts, data = _state(_mlp()), _data()
    g1, l1, _, _ = compute_gradients(EAGER, luxc.MSELoss(), data, ts)
    g2, l2, _, _ = compute_gradients(XLA, luxc.MSELoss(), data, ts)
    _close(g1, g2)


def test_donation_frees_the_old_buffers():
    ts, data = _state(_mlp()), _data()
    _, _, _, ts = single_train_step_(XLA, luxc.MSELoss(), data, ts)
    old = jax.tree.leaves((ts.parameters, ts.optimizer_state))
    _, _, _, ts2 = single_train_step_(XLA, luxc.MSELoss(), data, ts)
    assert all(leaf.is_deleted() for leaf in old)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(ts2.parameters))


def test_compiled_module_aliases_donated_inputs_to_outputs():
    ts, data = _state(_mlp()), _data()
    cs = luxc.compile_step(luxc.MSELoss(), data, ts, donate=True)
    assert "input_output_alias" in cs.as_text("hlo")
    assert cs.memory_stats()["alias_size_in_bytes"] > 0


def test_reusing_a_donated_array_in_a_new_state_is_explained():
    ts, data = _state(_mlp()), _data()
    _, _, _, ts = single_train_step_(XLA, luxc.MSELoss(), data, ts)
    stale = ts.replace(parameters=ts.parameters)  # a new TrainState around the same buffers
    single_train_step_(XLA, luxc.MSELoss(), data, ts)
    with pytest.raises(luxc.training.ConsumedStateError, match=r"parameters\['layer_1'\]"):
        single_train_step_(XLA, luxc.MSELoss(), data, stale)


@pytest.fixture
def recompile_check(monkeypatch):
    def set_to(value):
        monkeypatch.setattr(luxc._preferences, "_values", None)
        monkeypatch.setenv("LUXC_RECOMPILE_CHECK", value)
    yield set_to
    monkeypatch.setattr(luxc._preferences, "_values", None)


def test_recompile_check_warn_says_what_changed(recompile_check):
    recompile_check("warn")
    ts, data = _state(_mlp()), _data()
    single_train_step(XLA, luxc.MSELoss(), data, ts)
    with pytest.warns(luxc.runtime.RecompileWarning,
                      match=r"data\[0\]: shape \(8, 4\) -> \(5, 4\); data\[1\]: shape \(8, 3\) -> \(5, 3\)$") as w:
        single_train_step(XLA, luxc.MSELoss(), (data[0][:5], data[1][:5]), ts)
    assert w[0].filename == __file__  # the user's call site, not luxc's internals
    with pytest.warns(luxc.runtime.RecompileWarning, match="compile options: ") as w:
        single_train_step(XLA, luxc.MSELoss(), data, ts,
                          compile_options=luxc.CompileOptions(precision="high"))
    assert "data[" not in str(w[0].message)  # unchanged parts are not mentioned


def test_recompile_check_error_raises_and_none_is_silent(recompile_check):
    recompile_check("error")
    ts, data = _state(_mlp()), _data()
    single_train_step(XLA, luxc.MSELoss(), data, ts)
    with pytest.raises(luxc.runtime.RecompileError, match=r"data\[0\]: dtype float32 -> bfloat16"):
        single_train_step(XLA, luxc.MSELoss(), (data[0].astype(jnp.bfloat16), data[1]), ts)
    recompile_check("none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single_train_step(XLA, luxc.MSELoss(), (data[0][:2], data[1][:2]), ts)


def test_testmode_is_part_of_the_program_key_and_the_flipped_flag_is_named():
    model = nn.Chain(nn.Dense(4, 8), nn.Dropout(0.5), nn.Dense(8, 3))
    ts, data = _state(model), _data()
    single_train_step(XLA, luxc.MSELoss(), data, ts)
    single_train_step(XLA, luxc.MSELoss(), data, ts.replace(states=luxc.testmode(ts.states)))
    assert luxc.cache_info(ts).misses == 2
    (reason,) = luxc.explain_recompiles(ts)
    assert reason == ("recompiling: states['layer_2']['training']: Val(True) -> Val(False) "
                      "(train mode -> test mode)")


def test_the_cache_is_bounded():
    ts, data = _state(_mlp()), _data()
    ts.cache.max_entries = 2
    for n in (2, 3, 4):
        single_train_step(XLA, luxc.MSELoss(), (data[0][:n], data[1][:n]), ts)
    assert luxc.cache_info(ts).entries == 2
    single_train_step(XLA, luxc.MSELoss(), (data[0][:4], data[1][:4]), ts)  # kept: a hit
    assert luxc.cache_info(ts).misses == 3
    single_train_step(XLA, luxc.MSELoss(), (data[0][:2], data[1][:2]), ts)  # evicted: compiles
    assert luxc.cache_info(ts).misses == 4 and luxc.cache_info(ts).entries == 2


def test_a_donating_compiled_step_consumes_its_train_state():
    ts, data = _state(_mlp()), _data()
    cs = luxc.compile_step(luxc.MSELoss(), data, ts, donate=True)
    _, _, _, new = cs(ts, data)
    with pytest.raises(luxc.training.ConsumedStateError, match="donating CompiledStep"):
        cs(ts, data)
    cs(new, data)


def test_compile_step_stages_and_figures():
    # LayerNorm's "/ sqrt" is what fuse_rsqrt rewrites (BatchNorm's training mode has an rsqrt).
    ts, data = _state(nn.Chain(nn.Dense(4, 16), nn.LayerNorm(16), nn.Dense(16, 3))), _data()
    cs = luxc.compile_step(luxc.MSELoss(), data, ts,
                           compile_options=luxc.CompileOptions(passes=["fuse_rsqrt"]))
    traced, optimized = cs.as_text("traced"), cs.as_text("optimized")
    assert "func.func public @main" in traced and "stablehlo.rsqrt" not in traced
    assert "stablehlo.rsqrt" in optimized
    assert "HloModule" in cs.as_text("hlo")
    (record,) = cs.pass_report
    assert record.name == "fuse_rsqrt" and record.rewrites >= 1
    assert cs.cost_analysis()["flops"] > 0
    eager = compute_objective(EAGER, luxc.MSELoss(), data, ts)[0]  # a step's loss: before its update
    grads, loss, stats, ts2 = cs(ts, data)
    assert ts2.step == 1 and float(loss) == pytest.approx(float(eager), rel=1e-5)
    with pytest.raises(ValueError, match="stage must be"):
        cs.as_text("llvm")


def test_dump_dir_holds_the_module_after_every_pass(tmp_path):
    ts, data = _state(_mlp()), _data()
    options = luxc.CompileOptions(passes="all", dump_dir=tmp_path)
    luxc.compile_step(luxc.MSELoss(), data, ts, compile_options=options)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00-input.mlir", "01-maxpool_grad_select.mlir", "02-conv_few_channels.mlir",
                     "03-conv_depthwise.mlir", "04-conv_depthwise_weight_grad.mlir",
                     "05-conv_full_window_dot.mlir", "06-conv_input_grad_dot.mlir",
                     "07-conv_weight_grad_dot.mlir", "08-dot_flatten.mlir",
                     "09-dot_scale_fold.mlir", "10-dot_swap_operands.mlir", "11-fuse_rsqrt.mlir",
                     "12-fuse_loss_reductions.mlir", "13-dot_f32_accumulate.mlir",
                     "14-dot_bf16_canonical.mlir", "15-dot_bf16_batched.mlir",
                     "16-reduce_f32_accumulate.mlir", "17-reduce_window_f32.mlir",
                     "18-relu_mask_from_output.mlir", "19-elementwise_bf16_f32.mlir",
                     "20-convert_bf16_bits.mlir", "21-dus_bf16_bits.mlir", "99-xla-optimized.hlo.txt"]


def test_xla_options_reach_the_compiler():
    ts, data = _state(_mlp()), _data()
    # An XLA option whose effect shows in XLA's optimised HLO: without its "fusion" pass XLA
    # fuses differently, so the compiled program differs, and computes the same loss.
    options = luxc.CompileOptions(xla_options={"xla_disable_hlo_passes": "fusion"})
    default = luxc.compile_step(luxc.MSELoss(), data, ts)
    changed = luxc.compile_step(luxc.MSELoss(), data, ts, compile_options=options)
    assert changed.as_text("hlo") != default.as_text("hlo")
    assert default.as_text("optimized") == changed.as_text("optimized")  # same module in
    _, loss, _, _ = single_train_step(XLA, luxc.MSELoss(), data, ts, compile_options=options)
    reference, _, _ = compute_objective(EAGER, luxc.MSELoss(), data, ts)  # the step's loss
    np.testing.assert_allclose(float(loss), float(reference), rtol=1e-6)
    with pytest.raises(ValueError, match="start with 'xla_'"):
        luxc.CompileOptions(xla_options={"fast_math": True})


def test_compile_options_validate_their_arguments():
    with pytest.raises(ValueError, match="precision must be one of 'default', 'high', 'highest'"):
        luxc.CompileOptions(precision="max")
    with pytest.raises(ValueError, match="unknown pass 'fuse_everything'"):
        luxc.CompileOptions(passes=["fuse_everything"])
    with pytest.raises(TypeError, match="compile_options must be a luxc.CompileOptions"):
        luxc.compile_step(luxc.MSELoss(), _data(), _state(_mlp()), compile_options={"passes": "all"})


def test_precision_reaches_the_dot_products():
    ts, data = _state(_mlp()), _data()
    highest = luxc.compile_step(luxc.MSELoss(), data, ts,
                                compile_options=luxc.CompileOptions(precision="highest"))
    assert "HIGHEST" in highest.as_text("traced")


def test_sync_blocks_until_the_result_is_ready():
    ts, data = _state(_mlp()), _data()
    _, loss, _, ts = single_train_step_(XLA, luxc.MSELoss(), data, ts, sync=True)
    assert loss.is_ready()


def test_donation_xla_cannot_honour_names_the_buffer():
    def init(params):
        return {"counter": jnp.zeros(3, jnp.int32)}

    def update(grads, state, params=None):  # changes the state leaf's dtype
        return jax.tree.map(lambda g: -0.1 * g, grads), {"counter": state["counter"] + 0.5}

    ts = _state(_mlp(), opt=optax.GradientTransformation(init, update))
    with pytest.warns(luxc.runtime.DonationWarning,
                      match=r"optimizer_state\['counter'\] \(int32\[3\]\) in place"):
        single_train_step_(XLA, luxc.MSELoss(), _data(), ts)


def test_donation_of_an_ordinary_step_is_silent():
    ts, data = _state(_mlp()), _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single_train_step_(XLA, luxc.MSELoss(), data, ts)


def test_the_train_state_remembers_the_objective_function():
    ts, data = _state(_mlp()), _data()

    def objective(model, ps, st, d):
        return luxc.MSELoss()(model, ps, st, d)

    _, _, _, ts2 = single_train_step(XLA, objective, data, ts)
    assert ts2.objective_function is objective


def test_compile_step_rejects_donation_outside_the_train_step():
    with pytest.raises(ValueError, match="donate=True applies to kind='train' only"):
        luxc.compile_step(luxc.MSELoss(), _data(), _state(_mlp()), donate=True, kind="objective")


def test_a_first_evaluation_program_is_not_a_recompile(recompile_check):
    recompile_check("error")
    ts, data = _state(_mlp()), _data()
    single_train_step(XLA, luxc.MSELoss(), data, ts)
    compute_objective(XLA, luxc.MSELoss(), data, ts)
    compute_gradients(XLA, luxc.MSELoss(), data, ts)
    with pytest.raises(luxc.runtime.RecompileError,
                       match=r"recompiling: objective function: MSELoss\(agg='mean'\) -> MAELoss\(agg='mean'\) \("):
        single_train_step(XLA, luxc.MAELoss(), data, ts)


def test_explain_recompiles_records_every_recompile_with_its_reason():
    ts, data = _state(_mlp()), _data()
    single_train_step(XLA, luxc.MSELoss(), data, ts)
    single_train_step(XLA, luxc.MSELoss(), data, ts)
    assert luxc.explain_recompiles(ts) == []
    single_train_step(XLA, luxc.MSELoss(), (data[0][:4], data[1][:4]), ts)
    (reason,) = luxc.explain_recompiles(ts)
    assert reason == "recompiling: data[0]: shape (8, 4) -> (4, 4); data[1]: shape (8, 3) -> (4, 3)"


def test_a_new_pytree_structure_is_explained_as_such():
    ts, data = _state(_mlp()), _data()
    single_train_step(XLA, luxc.MSELoss(), data, ts)
    single_train_step(XLA, luxc.MSELoss(), [data[0], data[1]], ts)
    assert luxc.explain_recompiles(ts) == [
        "recompiling: the pytree structure of the arguments"]



def test_a_batchnorms_reductions_stay_reductions_in_a_convolving_step():
    # With every YNNPACK fusion off where a module convolves, XLA:CPU rewrote BatchNorm's sums
    # over (batch, image) into reduce-windows, 17x slower (benchmarks/README.md, "Platform XLA
    # options"); luxc keeps YNNPACK's reductions there.
    model = nn.Chain(nn.Conv((3, 3), 3, 16, jax.nn.relu, pad=1), nn.BatchNorm(16),
                     nn.GlobalMeanPool(), nn.FlattenLayer())
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    data = (normal(1, (64, 16, 16, 3)), jnp.zeros((64, 16)))
    hlo = luxc.compile_step(luxc.MSELoss(), data, ts).as_text("hlo")
    # (the loss's own small sum over (64, 16) may stay one: YNNPACK does not take it)
    over_images = re.findall(r"= f32\[\d+,\d+,\d+,\d+\]\{[\d,]+\} reduce-window\(", hlo)
    assert "convolution(" in hlo and over_images == []  # 8 with every YNNPACK fusion off


def test_cpu_default_xla_options_follow_what_the_module_contains():
    # benchmarks/README.md: YNNPACK's convolutions and dots off (its reductions kept) speed a
    # convolutional step up and slow the others down, so luxc decides per module; temporaries go in heaps of at most 30 MiB, or of
    # the module's largest tensor when that is bigger; the user's own option wins.
    from jax import export as jax_export

    from luxc.runtime.compiling._module_ops import ModuleSummary, summary
    from luxc.runtime.compiling._options import platform_xla_options

    conv = jax_export.export(jax.jit(lambda x, w: jax.lax.conv(x, w, (1, 1), "VALID")))(
        jnp.ones((1, 1, 8, 8)), jnp.ones((2, 1, 3, 3)))
    dense = jax_export.export(jax.jit(lambda x, w: x @ w))(jnp.ones((4, 3)), jnp.ones((3, 2)))
    big = jax_export.export(jax.jit(lambda x: jnp.outer(x, x).astype(jnp.complex64)))(jnp.ones(3000))  # 72 MB
    heap = "xla_multiheap_size_constraint_per_heap"
    assert summary(big.mlir_module_serialized).largest_tensor_bytes == 3000 * 3000 * 8
    assert platform_xla_options("cpu", summary(conv.mlir_module_serialized)) == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE", heap: 30 << 20}
    assert platform_xla_options("cpu", summary(dense.mlir_module_serialized)) == {heap: 30 << 20}
    assert platform_xla_options("cpu", summary(big.mlir_module_serialized)) == {heap: 3000 * 3000 * 8}
    assert platform_xla_options("cuda", summary(conv.mlir_module_serialized)) == {}
    # An executable that will be written out keeps one heap: XLA:CPU serializes no other.
    assert platform_xla_options("cpu", summary(dense.mlir_module_serialized), serializable=True) == {}
    # XLA takes the limit as an int32: a module with a 3 GB tensor keeps XLA's one heap.
    # XLA:CPU sorts bfloat16 in float32: a (64, 2**18) bfloat16 sort keeps a 64 MiB temporary.
    sort = jax_export.export(jax.jit(lambda x: jnp.sort(x, axis=1)))(
        jax.ShapeDtypeStruct((64, 2**18), jnp.bfloat16))
    assert platform_xla_options("cpu", summary(sort.mlir_module_serialized)) == {heap: 64 << 20}
    huge = ModuleSummary(frozenset({"stablehlo.dot_general"}), 3 * 10**9)
    assert platform_xla_options("cpu", huge) == {}
    options = platform_xla_options("cpu", ModuleSummary(frozenset(), 2**31 - 1))
    jax.jit(lambda x: x * 2).lower(jnp.ones(4)).compile(compiler_options=options)  # accepted
