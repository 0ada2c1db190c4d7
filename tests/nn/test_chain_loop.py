"""A Chain's run of one repeated layer traced as one loop (luxc/nn/_chain_loop.py): the same
values, states and gradients as the unrolled Chain (Lux's `applychain`, src/layers/containers.jl,
applies the layers one after the other), the same parameter trees, errors that still name the
layer, and the loop taken only where it pays."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from benchmarks import workloads as wl
from luxc import nn
from luxc.nn import _chain_loop

X = jax.random.normal(jax.random.key(1), (32, 6))


@pytest.fixture
def small_runs_loop(monkeypatch):
    # The size thresholds are for real models; here any run of MIN_REPEATS same layers loops.
    monkeypatch.setattr(_chain_loop, "MIN_RUN_BYTES", 0)
    monkeypatch.setattr(_chain_loop, "MIN_ACTIVATION_RATIO", 0)


@pytest.fixture
def unrolled():
    yield lambda: luxc.set_preferences(chain_loop="never")
    luxc.set_preferences(chain_loop="auto")


def _block(scale=1.0):
    # A residual block with state (BatchNorm's running statistics), built by a factory: each
    # call makes a new closure, as users' block factories do.
    @luxc.compact(norm=nn.BatchNorm(6), dense=nn.Dense(6, 6, jax.nn.tanh))
    def block(self, x):
        return x + scale * self.dense(self.norm(x))
    return block


def _primitives(model, ps, st, x=X):
    jaxpr = jax.make_jaxpr(lambda x, ps, st: model(x, ps, st))(x, ps, st).jaxpr
    return [str(e.primitive) for e in jaxpr.eqns]


def _loss(model):
    def loss(ps, st):
        y, st = model(X, ps, st)
        return jnp.sum(jnp.sin(y)), st
    return jax.value_and_grad(loss, has_aux=True)


def test_a_looped_run_has_the_unrolled_values_states_and_gradients(small_runs_loop, unrolled):
    n = _chain_loop.MIN_REPEATS + 2
    chain = nn.Chain(nn.Dense(6, 6), *[_block() for _ in range(n)], nn.Dense(6, 3))
    ps, st = luxc.setup(0, chain)
    assert "scan" in _primitives(chain, ps, st)
    (looped, st_looped), g_looped = jax.jit(_loss(chain))(ps, st)
    unrolled()
    assert "scan" not in _primitives(chain, ps, st)
    (plain, st_plain), g_plain = jax.jit(_loss(chain))(ps, st)
    np.testing.assert_allclose(looped, plain, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(st_looped) == jax.tree.structure(st_plain)
    # float32 rounding through ten batch norms: 1e-5 of each array's scale
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                    atol=1e-5 * float(np.max(np.abs(b))))
    jax.tree.map(close, st_looped, st_plain)
    jax.tree.map(close, g_looped, g_plain)
    # The running statistics moved, layer by layer: the loop did not share one state.
    means = [st_looped[f"layer_{i}"]["norm"]["running_mean"] for i in (2, 3)]
    assert not np.allclose(means[0], means[1])


def test_a_compiled_step_of_a_looped_chain_trains_as_the_unrolled_one(small_runs_loop,
                                                                        unrolled):
    chain = nn.Chain(*[_block() for _ in range(_chain_loop.MIN_REPEATS)])
    data = (X, jnp.cos(X))

    def train(steps=3):
        ps, st = luxc.setup(0, chain)
        ts = luxc.TrainState(chain, ps, st, optax.adam(1e-2))
        step = luxc.compile_step(luxc.MSELoss(), data, ts)
        for _ in range(steps):
            _, loss, _, ts = step(ts, data)
        return loss, ts, step.as_text("traced")

    loss_looped, looped, module = train()
    assert "stablehlo.while" in module
    unrolled()
    loss_plain, plain, module = train()
    assert "stablehlo.while" not in module
    np.testing.assert_allclose(loss_looped, loss_plain, rtol=1e-5)
    assert jax.tree.structure(looped.parameters) == jax.tree.structure(plain.parameters)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 looped.parameters, plain.parameters)


def test_same_layer_compares_configuration_code_and_closures():
    assert _chain_loop.same_layer(_block(), _block())
    assert not _chain_loop.same_layer(_block(1.0), _block(2.0))  # a closure's value differs
    assert _chain_loop.same_layer(nn.Dense(4, 4, jax.nn.relu), nn.Dense(4, 4, jax.nn.relu))
    assert not _chain_loop.same_layer(nn.Dense(4, 4, jax.nn.relu), nn.Dense(4, 4, jax.nn.gelu))
    assert not _chain_loop.same_layer(nn.Dense(4, 4), nn.Dense(4, 4, use_bias=False))
    # Two lambdas written apart are different code, even when they read the same.
    assert not _chain_loop.same_layer(nn.WrappedFunction(lambda x: x + 1),
                                      nn.WrappedFunction(lambda x: x + 1))
    assert not _chain_loop.same_layer(nn.Dense(4, 4), nn.LayerNorm(4))
    leaky = lambda slope: nn.Dense(4, 4, functools.partial(jax.nn.leaky_relu,
                                                           negative_slope=slope))
    assert _chain_loop.same_layer(leaky(0.1), leaky(0.1))
    assert not _chain_loop.same_layer(leaky(0.1), leaky(0.2))
    assert not _chain_loop.same_layer(nn.Dense(4, 4, lambda x, s=0.0: x + s),
                                      nn.Dense(4, 4, lambda x, s=-0.0: x + s))
    # Blocks written as Lux writes them, containers of containers (a Chain holds its layers
    # twice, in `layers` and by name), are the same when built alike.
    lux_block = lambda out=64: nn.Chain(nn.LayerNorm(64), nn.SkipConnection(
        nn.Chain(nn.Dense(64, out, jax.nn.gelu), nn.Dense(out, 64)), jnp.add))
    assert _chain_loop.same_layer(lux_block(), lux_block())
    assert not _chain_loop.same_layer(lux_block(64), lux_block(32))
    # A layer that refers back to its parent: compared as a structure, and the comparison ends.
    parents = [nn.Chain(nn.Dense(2, 2)), nn.Chain(nn.Dense(2, 2)), nn.Chain(nn.Dense(2, 3))]
    for p in parents:
        p.layers[0].parent = p
    assert _chain_loop.same_layer(parents[0], parents[1])
    assert not _chain_loop.same_layer(parents[0], parents[2])
    # Shared parts are compared once: two configurations of 2^40 paths each compare quickly.
    def tower(leaf):
        t = [leaf]
        for _ in range(40):
            t = (t, t)
        return nn.WrappedFunction(lambda x, t=t: x)

    assert _chain_loop.same_layer(tower(0.5), tower(0.5))
    assert not _chain_loop.same_layer(tower(0.5), tower(0.25))

    class Slotted(nn.AbstractLayer):  # configuration outside vars(): only itself is the same
        __slots__ = ("k",)

        def __init__(self, k):
            self.k = k

        def __call__(self, x, ps, st):
            return x * self.k, st

    assert not _chain_loop.same_layer(Slotted(1.0), Slotted(2.0))
    one = Slotted(1.0)
    assert _chain_loop.same_layer(one, one)


def test_runs_are_the_maximal_stretches_of_one_layer(monkeypatch):
    monkeypatch.setattr(_chain_loop, "MIN_REPEATS", 2)
    d4 = lambda: nn.Dense(4, 4)
    layers = [d4(), d4(), d4(), nn.Dense(4, 2), nn.Dense(2, 2), nn.Dense(2, 2), nn.Dense(2, 3)]
    assert _chain_loop.repeated_runs(layers) == [(0, 3), (4, 6)]


def test_layers_that_change_the_shape_stay_unrolled_static_state_loops(small_runs_loop):
    n = _chain_loop.MIN_REPEATS
    # Each FlattenLayer(N=2) merges the last two axes: same layers, but no loop can carry them.
    flatten = nn.Chain(*[nn.FlattenLayer(N=2) for _ in range(3)])
    x = jnp.ones((2,) * 5)
    assert flatten(x, *luxc.setup(0, flatten))[0].shape == (2, 16)

    @luxc.compact(count=3)  # a Python number in the state is static (a Val): loops carry it
    def counted(self, x):
        return x * self.count

    chain = nn.Chain(*[counted] * n)
    ps, st = luxc.setup(0, chain)
    assert "scan" in _primitives(chain, ps, st)
    y, st_out = jax.jit(lambda x, ps, st: chain(x, ps, st))(X, ps, st)
    np.testing.assert_allclose(y, X * 3.0 ** n, rtol=1e-5)
    assert st_out == st


def test_a_wrong_input_still_names_the_chain_s_first_layer(small_runs_loop):
    chain = nn.Chain(*[nn.Dense(6, 6) for _ in range(_chain_loop.MIN_REPEATS)])
    ps, st = luxc.setup(0, chain)
    with pytest.raises(luxc.nn.LayerShapeError, match="Chain layer_1: .*6"):
        chain(jnp.ones((2, 5)), ps, st)


def test_only_long_activation_heavy_runs_loop_by_default():
    # The measured cases of the module's docstring: eight 8-batch transformer blocks loop,
    # eight Dense(512, 512) at batch 128 (the parameters weigh as much as the work) do not,
    # and neither do four transformer blocks.
    def loops(layers, x):
        chain = nn.Chain(*layers)
        ps, st = jax.eval_shape(lambda: luxc.setup(0, chain))
        return "scan" in _primitives(chain, ps, st, jax.ShapeDtypeStruct(x.shape, x.dtype))

    blocks = lambda n: [wl.transformer_block() for _ in range(n)]
    assert loops(blocks(8), jnp.ones((8, wl.T, wl.W)))
    assert not loops(blocks(4), jnp.ones((8, wl.T, wl.W)))
    assert not loops([nn.Dense(512, 512, jax.nn.relu) for _ in range(8)], jnp.ones((128, 512)))


def test_the_preference_keeps_every_chain_unrolled(small_runs_loop, unrolled):
    chain = nn.Chain(*[_block() for _ in range(_chain_loop.MIN_REPEATS)])
    ps, st = luxc.setup(0, chain)
    unrolled()
    assert luxc.preference("chain_loop") == "never"
    assert "scan" not in _primitives(chain, ps, st)
    with pytest.raises(ValueError, match="chain_loop must be one of auto, never"):
        luxc.set_preferences(chain_loop="sometimes")


def test_dropout_in_a_looped_run_draws_the_unrolled_chain_s_masks(small_runs_loop, unrolled):
    # Each layer's key is in its own state (Lux's Dropout): the loop carries eight keys.
    def block():
        @luxc.compact(dense=nn.Dense(6, 6, jax.nn.tanh), drop=nn.Dropout(0.5))
        def dropped(self, x):
            return x + self.drop(self.dense(x))
        return dropped

    chain = nn.Chain(*[block() for _ in range(_chain_loop.MIN_REPEATS)])
    ps, st = luxc.setup(0, chain)
    assert "scan" in _primitives(chain, ps, st)
    call = lambda: jax.jit(lambda x, ps, st: chain(x, ps, st))(X, ps, st)
    y_looped, st_looped = call()
    unrolled()
    y_plain, st_plain = call()
    np.testing.assert_allclose(y_looped, y_plain, rtol=1e-6, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, st_looped, st_plain)
    rngs = {tuple(np.ravel(st_looped[f"layer_{i + 1}"]["drop"]["rng"]))
            for i in range(_chain_loop.MIN_REPEATS)}
    assert len(rngs) == _chain_loop.MIN_REPEATS  # each layer's own key, moved on


def test_a_chain_run_op_by_op_stays_unrolled(small_runs_loop, monkeypatch):
    # Outside a trace the loop would be traced again at every call: only traced calls loop.
    chain = nn.Chain(*[_block() for _ in range(_chain_loop.MIN_REPEATS)])
    ps, st = luxc.setup(0, chain)
    traced = jax.jit(lambda x, ps, st: chain(x, ps, st))(X, ps, st)

    def no_loop(*args):
        raise AssertionError("an op-by-op call ran the loop")

    monkeypatch.setattr(_chain_loop, "run_as_loop", no_loop)
    eager = chain(X, ps, st)
    np.testing.assert_allclose(eager[0], traced[0], rtol=1e-5, atol=1e-5)


def test_what_the_loop_cannot_take_runs_unrolled(small_runs_loop, unrolled):
    n = _chain_loop.MIN_REPEATS
    # A weakly typed float32 input meets bfloat16 weights: each layer returns bfloat16.
    chain = nn.Chain(lambda x: jnp.where(x > 0, 1.0, 0.0),
                     *[nn.Dense(6, 6, jnp.tanh, dtype=jnp.bfloat16) for _ in range(n)])
    ps, st = luxc.setup(0, chain)
    looped = jax.jit(lambda x, ps, st: chain(x, ps, st)[0])(X, ps, st)
    unrolled()
    plain = jax.jit(lambda x, ps, st: chain(x, ps, st)[0])(X, ps, st)
    assert looped.dtype == plain.dtype == jnp.bfloat16
    np.testing.assert_allclose(looped.astype(np.float32), plain.astype(np.float32))


def test_a_layer_changed_after_the_chain_was_built_is_compared_again(small_runs_loop):
    chain = nn.Chain(*[nn.Dense(6, 6, jnp.tanh) for _ in range(_chain_loop.MIN_REPEATS)])
    ps, st = luxc.setup(0, chain)
    chain.layers[-1].activation = jax.nn.relu
    y = jax.jit(lambda x, ps, st: chain(x, ps, st)[0])(X, ps, st)
    assert float(jnp.min(y)) >= 0.0  # the last layer's relu, not the others' tanh


def test_jax_grad_op_by_op_stays_unrolled(small_runs_loop, monkeypatch):
    chain = nn.Chain(*[_block() for _ in range(_chain_loop.MIN_REPEATS)])
    ps, st = luxc.setup(0, chain)

    def no_loop(*args):
        raise AssertionError("an op-by-op jax.grad ran the loop")

    monkeypatch.setattr(_chain_loop, "run_as_loop", no_loop)
    g = jax.grad(lambda ps: jnp.sum(chain(X, ps, st)[0]))(ps)
    assert jax.tree.structure(g) == jax.tree.structure(ps)


def test_a_loop_a_later_preference_breaks_falls_back_to_the_unrolled_chain(small_runs_loop):
    # Measured under eltype_mismatch_handling="none" (float32 in, float32 out: it loops), then
    # traced under "convert", where each float16 layer returns float16: the loop cannot carry
    # that, and the chain runs unrolled instead of raising.
    chain = nn.Chain(*[nn.Dense(6, 6, jnp.tanh) for _ in range(_chain_loop.MIN_REPEATS)])
    ps, st = luxc.setup(0, chain)
    ps = jax.tree.map(lambda a: a.astype(jnp.float16), ps)
    assert "scan" in _primitives(chain, ps, st)
    luxc.set_preferences(eltype_mismatch_handling="convert")
    try:
        with pytest.warns(UserWarning, match="converting"):  # what "convert" says
            y = jax.jit(lambda x, ps, st: chain(x, ps, st)[0])(X, ps, st)
    finally:
        luxc.set_preferences(eltype_mismatch_handling="none")
    assert y.dtype == jnp.float16
