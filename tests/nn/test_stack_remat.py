"""luxc.nn.Stack, RepeatedLayer and Remat against independent values: a Chain of the stack's
slices, the layer applied k times by hand (Lux.jl's src/layers/containers.jl RepeatedLayer),
plain (not recomputed) gradients; the traced module's size does not grow with depth."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from tests.support import run_python

X = jax.random.normal(jax.random.key(1), (5, 6))


def _block():
    # A residual pre-norm block with state (LayerNorm has none, BatchNorm does).
    @luxc.compact(norm=nn.BatchNorm(6), dense=nn.Dense(6, 6, jax.nn.tanh))
    def block(self, x):
        return x + self.dense(self.norm(x))
    return block


def _slice(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _as_chain(n):
    chain = nn.Chain(*[_block()] * n)
    return chain


def test_stack_parameters_are_the_chain_s_layers_stacked():
    n = 3
    ps, st = luxc.setup(0, nn.Stack(_block(), n))
    pc, sc = luxc.setup(0, _as_chain(n))
    assert jax.tree.map(jnp.shape, ps)["dense"]["weight"] == (n, 6, 6)
    for i in range(n):
        jax.tree.map(np.testing.assert_array_equal, _slice(ps, i), pc[f"layer_{i + 1}"])
        jax.tree.map(np.testing.assert_array_equal, _slice(st, i), sc[f"layer_{i + 1}"])


@pytest.mark.parametrize("mode", ["train", "test"])
def test_stack_equals_a_chain_of_its_slices_values_state_and_gradients(mode):
    n = 3
    stack = nn.Stack(_block(), n)
    ps, st = luxc.setup(0, stack)
    chain = _as_chain(n)
    pc = {f"layer_{i + 1}": _slice(ps, i) for i in range(n)}
    sc = {f"layer_{i + 1}": _slice(st, i) for i in range(n)}
    if mode == "test":
        st, sc = nn.testmode(st), nn.testmode(sc)

    def loss(model, p, s):
        y, s = model(X, p, s)
        return jnp.sum(y ** 2), (y, s)

    (ls, (ys, new_st)), gs = jax.value_and_grad(lambda p: loss(stack, p, st), has_aux=True)(ps)
    (lc, (yc, new_sc)), gc = jax.value_and_grad(lambda p: loss(chain, p, sc), has_aux=True)(pc)
    np.testing.assert_allclose(ys, yc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ls, lc, rtol=1e-5)
    for i in range(n):
        for a, b in zip(jax.tree.leaves(_slice(gs, i)), jax.tree.leaves(gc[f"layer_{i + 1}"])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        for a, b in zip(jax.tree.leaves(_slice(new_st, i)), jax.tree.leaves(new_sc[f"layer_{i + 1}"])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _module_chars(model, n):
    m = model(n)
    ps, st = luxc.setup(0, m)
    return len(jax.jit(lambda p: m(X, p, st)[0]).lower(ps).as_text())


def test_the_traced_module_does_not_grow_with_depth():
    stack = lambda n: nn.Stack(_block(), n)
    assert _module_chars(stack, 16) <= 1.05 * _module_chars(stack, 2)
    # The same measure does see depth when the model is unrolled.
    assert _module_chars(_as_chain, 16) > 4 * _module_chars(_as_chain, 2)


def test_counts_and_printout():
    block = _block()
    stack = nn.Stack(block, 12)
    assert luxc.parameter_count(stack) == 12 * luxc.parameter_count(block) == 12 * (42 + 12)
    # BatchNorm state: 6 + 6 statistics and one training flag per block.
    assert luxc.state_count(stack) == 12 * 12 + 1
    text = repr(nn.Chain(nn.Dense(6, 6), stack))
    assert "layer_2 = Stack(12 × @compact(norm, dense)),  # 12 × 54 parameters" in text
    assert nn.Stack(block, 2, remat=None).summary() == "Stack(2 × @compact(norm, dense), remat=None)"
    assert "Total: 690 parameters" in text


def test_stack_rejects_a_block_that_changes_the_shape_and_a_bad_n():
    stack = nn.Stack(nn.Dense(6, 3), 2)
    ps, st = luxc.setup(0, stack)
    with pytest.raises(nn.LayerShapeError, match=r"Stack\(Dense\(6 => 3\)\) needs a layer whose "
                                                  r"output has its input's shape"):
        stack(X, ps, st)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="Stack: n must be a positive int"):
            nn.Stack(nn.Dense(6, 6), bad)


def test_stacked_axes_and_the_fsdp_split_skip_the_layer_axis():
    model = nn.Chain(nn.Dense(8, 8), nn.Stack(nn.Stack(nn.Dense(8, 8), 2), 16))
    assert nn.stacked_axes(model) == {"layer_1": {"bias": 0, "weight": 0},
                                      "layer_2": {"bias": 2, "weight": 2}}
    spec = luxc.distributed.fsdp_spec
    assert spec((16, 8, 8), 8, "data") == jax.sharding.PartitionSpec("data")
    assert spec((16, 8, 8), 8, "data", skip=1) == jax.sharding.PartitionSpec(None, "data")
    assert spec((16, 8), 8, "data", skip=2) == jax.sharding.PartitionSpec()


FSDP_STACK = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np, optax, luxc
    from luxc import nn
    model = nn.Chain(nn.Dense(4, 8), nn.Stack(nn.Dense(8, 8, jax.nn.tanh), 16))
    ps, st = luxc.setup(0, model)
    start = luxc.TrainState(model, ps, st, optax.adam(1e-2))  # on device 0; the steps keep it
    x = np.asarray(jax.random.normal(jax.random.key(1), (16, 4)))
    y = np.asarray(jax.random.normal(jax.random.key(2), (16, 8)))
    with jax.default_device(jax.local_devices()[0]):
        ref = start
        for _ in range(2):
            ref = luxc.training.single_train_step(luxc.AutoJAX(), luxc.MSELoss(), (x, y), ref)[3]
    mesh = jax.make_mesh((8,), ("data",))
    ts = luxc.distributed.shard(start, mesh, strategy="fsdp")
    placed = [str(a.sharding.spec) for a in jax.tree.leaves(ts.optimizer_state[0].mu)]
    data = luxc.distributed.shard_batch((x, y), mesh)
    for _ in range(2):
        ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)[3]
    w = ts.parameters["layer_2"]["weight"]
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(ref.parameters), jax.tree.leaves(ts.parameters)))
    print("RESULT", json.dumps({"spec": str(w.sharding.spec), "mu": placed, "diff": diff}))
""")


@pytest.mark.slow
def test_fsdp_on_eight_devices_never_splits_the_stacked_axis():
    r = run_python(FSDP_STACK, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    assert out["spec"] == "P(None, 'data')"   # (16, 8, 8): 16 is the layer axis
    # Adam's mu: layer_1's bias (8,) and weight (8, 4) split on their 8 rows; the stack's bias
    # (16, 8) and weight (16, 8, 8) on their axis 1, never the 16 layers.
    assert out["mu"] == ["P('data',)", "P('data',)",
                         "P(None, 'data')", "P(None, 'data')"]
    assert out["diff"] < 1e-5


def test_a_stack_trains_checkpoints_and_resumes(tmp_path):
    model = nn.Stack(_block(), 3)
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    data = (X, jnp.zeros_like(X))
    step = lambda t: luxc.training.single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, t)[3]
    start, ts = ts, step(ts)
    luxc.save_state(tmp_path / "s.safetensors", ts)
    # `start` holds the initial values (a load that kept them would fail) and shares ts's
    # compiled step.
    resumed = luxc.load_state(tmp_path / "s.safetensors", like=start)
    a, b = step(ts), step(resumed)
    for u, v in zip(jax.tree.leaves((a.parameters, a.states)), jax.tree.leaves((b.parameters, b.states))):
        np.testing.assert_array_equal(u, v)


def test_a_stack_of_flax_blocks_equals_the_blocks_applied_in_turn():
    flax_nn = pytest.importorskip("flax.linen")

    class Block(flax_nn.Module):
        @flax_nn.compact
        def __call__(self, x):
            return x + jnp.tanh(flax_nn.Dense(6)(x))

    block = nn.FromFlax(Block(), X[:1])
    stack = nn.Stack(block, 3)
    ps, st = luxc.setup(0, stack)
    h = X
    for i in range(3):
        h, _ = block(h, _slice(ps, i), _slice(st, i))
    np.testing.assert_allclose(stack(X, ps, st)[0], h, rtol=1e-5, atol=1e-6)


# --- RepeatedLayer: Lux.jl src/layers/containers.jl, `RepeatedLayer` --------------------------
# "res = x; for i in 1:repeats; res, st = model(res, ps, st); end" and, with input_injection,
# "res, st = model((res, x), ps, st)".

class _Inject(nn.AbstractLayer):
    """h' = tanh(W h) + x, on the tuple (h, x)."""

    def init_parameters(self, key):
        return {"weight": jax.random.normal(key, (6, 6)) * 0.3}

    def init_states(self, key):
        return {"calls": jnp.zeros((), jnp.int32)}

    def __call__(self, hx, ps, st):
        h, x = hx
        return jnp.tanh(h @ ps["weight"]) + x, {"calls": st["calls"] + 1}


@pytest.mark.parametrize("repeats", [1, 4])
def test_repeated_layer_equals_the_layer_applied_k_times(repeats):
    layer = nn.Dense(6, 6, jax.nn.tanh)
    rep = nn.RepeatedLayer(layer, repeats)
    ps, st = luxc.setup(0, rep)
    assert jax.tree.map(jnp.shape, ps) == jax.tree.map(jnp.shape, luxc.setup(0, layer)[0])
    h = X
    for _ in range(repeats):
        h = jnp.tanh(h @ ps["weight"].T + ps["bias"])
    np.testing.assert_allclose(rep(X, ps, st)[0], h, rtol=1e-5, atol=1e-6)
    g_rep = jax.grad(lambda p: jnp.sum(rep(X, p, st)[0]))(ps)
    g_ref = jax.grad(lambda p: jnp.sum(_unrolled(layer, p, st, repeats)))(ps)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_rep, g_ref)


def _unrolled(layer, ps, st, repeats):
    h = X
    for _ in range(repeats):
        h, st = layer(h, ps, st)
    return h


def test_repeated_layer_with_input_injection_feeds_x_to_every_repetition():
    rep = nn.RepeatedLayer(_Inject(), 3, input_injection=True)
    ps, st = luxc.setup(0, rep)
    y, new_st = rep(X, ps, st)
    h = X
    for _ in range(3):
        h = jnp.tanh(h @ ps["weight"]) + X
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
    assert int(new_st["calls"]) == 3  # the state is threaded through the repetitions
    assert repr(rep).startswith("RepeatedLayer{nrepeats = 3, input_injection = true}(_Inject())")


# --- Remat ------------------------------------------------------------------------------------

def _sum_of_squares(ps, model, st):
    return jnp.sum(model(X, ps, st)[0] ** 2)


@pytest.fixture(scope="module")
def plain_stack():
    """A block, its plain stack's parameters and state, and that stack's value and gradients
    (lax.scan alone: every residual kept), once for the module: the reference of every
    remat below."""
    block = _block()
    plain = nn.Stack(block, 3, remat=None)
    ps, st = luxc.setup(0, plain)
    return block, ps, st, _sum_of_squares(ps, plain, st), jax.grad(_sum_of_squares)(ps, plain, st)


POLICIES = {"nothing_saveable": "nothing_saveable", "dots_saveable": "dots_saveable",
            "everything_saveable": jax.checkpoint_policies.everything_saveable}
REMATS = {**{f"Remat({name})": lambda b, p=p: nn.Stack(nn.Remat(b, p), 3, remat=None)
             for name, p in POLICIES.items()},
          **{f"Stack(remat={name})": lambda b, p=p: nn.Stack(b, 3, remat=p)
             for name, p in POLICIES.items()},
          "Stack(default remat)": lambda b: nn.Stack(b, 3)}


@pytest.mark.parametrize("make", REMATS.values(), ids=REMATS.keys())
def test_remat_has_the_plain_values_and_gradients(make, plain_stack):
    block, ps, st, value, grads = plain_stack
    model = make(block)
    np.testing.assert_allclose(_sum_of_squares(ps, model, st), value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(jax.grad(_sum_of_squares)(ps, model, st)),
                    jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # float32 rounding of ~8


def test_an_unknown_policy_lists_the_allowed_names():
    with pytest.raises(ValueError, match="remat policy must be one of nothing_saveable, "
                                         "everything_saveable, dots_saveable.*; received 'none'"):
        nn.Remat(nn.Dense(2, 2), "none")
    with pytest.raises(ValueError, match="remat policy must be one of"):
        nn.Stack(nn.Dense(2, 2), 2, remat="save_only_these_names")


def _temporaries(model):
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    x = jax.random.normal(jax.random.key(3), (256, 64))
    cs = luxc.compile_step(luxc.MSELoss(), (x, x), ts)
    return cs.memory_analysis()["temp_size_in_bytes"]


@pytest.mark.slow
def test_remat_lowers_the_compiled_step_s_temporaries():
    def block():
        @luxc.compact(a=nn.Dense(64, 256, jax.nn.gelu), b=nn.Dense(256, 256, jax.nn.tanh),
                      c=nn.Dense(256, 64))
        def mlp(self, x):
            return x + self.c(self.b(self.a(x)))
        return mlp

    plain = _temporaries(nn.Stack(block(), 8, remat=None))
    default = _temporaries(nn.Stack(block(), 8))  # dots_saveable: the GELU/tanh recomputed
    remat = _temporaries(nn.Stack(block(), 8, remat="nothing_saveable"))
    assert remat < default < 0.7 * plain, (remat, default, plain)
    # in float32 the default ("auto") is "dots_saveable"
    assert default == _temporaries(nn.Stack(block(), 8, remat="dots_saveable"))


@pytest.mark.slow
def test_an_exported_artifact_of_a_stack_trains_like_eager_autojax(tmp_path):
    model = nn.Stack(_block(), 3)
    ps, st = luxc.setup(0, model)
    data = (X, jnp.zeros_like(X))
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    luxc.export_step(luxc.MSELoss(), data, ts, tmp_path / "s.luxc")
    # exported for any batch size too: Stack's remat="auto" never compares a symbolic size
    assert {"forward.jaxexport", "evaluate.jaxexport"} <= {f.name for f in (tmp_path / "s.luxc").iterdir()}
    losses = luxc.load(tmp_path / "s.luxc").run(2)  # the second step sees the first update
    expected = []
    for _ in range(2):
        _, loss, _, ts = luxc.training.single_train_step(luxc.AutoJAX(), luxc.MSELoss(), data, ts)
        expected.append(float(loss))
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def _bf16_step_memory_and_values(remat):
    # A transformer-like residual MLP block, trained in mixed precision (bf16 inside the step).
    @luxc.compact(norm=nn.LayerNorm(64), up=nn.Dense(64, 256, jax.nn.gelu), down=nn.Dense(256, 64))
    def block(self, x):
        return x + self.down(self.up(self.norm(x)))

    model = nn.Stack(block, 6) if remat == "default" else nn.Stack(block, 6, remat=remat)
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    x = jax.random.normal(jax.random.key(3), (256, 64))
    options = luxc.CompileOptions(mixed_precision="bf16")
    cs = luxc.compile_step(luxc.MSELoss(), (x, x), ts, compile_options=options)
    grads, loss, _, _ = cs(ts, (x, x))
    return cs.memory_analysis()["temp_size_in_bytes"], float(loss), grads


@pytest.mark.slow
def test_stack_in_half_precision_recomputes_each_block_and_keeps_its_numbers():
    # remat="auto" (the default) in bf16 is "nothing_saveable": only each block's input is kept
    # (the step's temporaries are that policy's, fewer than "dots_saveable"'s), the forward
    # pass runs again in the backward loop, and loss and gradients are those of the step that
    # kept the products, within bf16's rounding.
    auto, loss, grads = _bf16_step_memory_and_values("default")
    nothing, _, _ = _bf16_step_memory_and_values("nothing_saveable")
    dots, dots_loss, dots_grads = _bf16_step_memory_and_values("dots_saveable")
    assert auto == nothing < dots, (auto, nothing, dots)
    assert loss == pytest.approx(dots_loss, rel=1e-2)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(dots_grads)):
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-2 * float(jnp.abs(b).max()))


def test_auto_remat_follows_the_largest_floating_point_array():
    bf16, f32 = jnp.ones((8, 8), jnp.bfloat16), jnp.ones((8, 8))
    assert nn._stack.auto_remat({"w": bf16, "scale": jnp.ones(8)}, jnp.ones(8, jnp.bfloat16)) \
        == "nothing_saveable"
    assert nn._stack.auto_remat({"w": f32}, jnp.ones(8, jnp.bfloat16)) == "dots_saveable"
    assert nn._stack.auto_remat({"w": jnp.ones((8, 8), jnp.float16)}, X) == "nothing_saveable"
    assert nn._stack.auto_remat({}, jnp.ones(4, jnp.int32)) == "dots_saveable"
    assert nn._stack.auto_remat({}, (jnp.ones(4, jnp.int32), jnp.ones(4, jnp.bfloat16))) \
        == "nothing_saveable"  # no parameter: the input's precision
    # float32 keeps the products: the same compiled step as asking for "dots_saveable"
    assert nn.Stack(nn.Dense(2, 2), 2).summary() == "Stack(2 × Dense(2 => 2))"
    assert "remat=dots_saveable" in nn.Stack(nn.Dense(2, 2), 2, remat="dots_saveable").summary()
