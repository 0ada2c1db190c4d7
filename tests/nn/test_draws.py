"""luxc.setup's random draws (luxc/nn/_draws.py) give jax.random's bits: the same programs,
compiled with XLA:CPU's loop emitters so that a model's setup compiles faster. The cases an
adversary found (bounds that round twice, keys closed over by jit, device and mesh contexts,
unusual shapes and dtypes) each have a test here."""

import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxc
from luxc import nn
from luxc.nn import _draws
from tests.support import run_python

# Ranks 0-4, empty, odd sizes: luxc draws prod(shape) elements and reshapes them.
SHAPES = [(), (1,), (7,), (0, 4), (3, 5, 2), (256, 768), (1000,), (5, 5, 1, 6), (3, 0, 2, 2),
          (2, 3, 5, 7)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
KEYS = {"typed key": jax.random.key(3), "raw uint32 key": jax.random.PRNGKey(3)}


def _bits(a: jax.Array) -> np.ndarray:
    return np.asarray(a).reshape(-1).view(np.uint8)


@pytest.mark.parametrize("kind", KEYS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_uniform_gives_jax_random_uniform_s_bits(shape, dtype, kind):
    key = KEYS[kind]
    for low, high in [(0.0, 1.0), (-0.0625, 0.0625), (-1 / 3, 2 / 7)]:
        ours = _draws.uniform(key, shape, dtype, low, high)
        theirs = jax.random.uniform(key, shape, dtype, low, high)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(_bits(ours), _bits(theirs))


@pytest.mark.parametrize("partitionable", [True, False])
def test_uniform_follows_the_threefry_layout_in_force(partitionable):
    # jax_threefry_partitionable changes the bits of a draw: the compiled program must too.
    # Shapes the test above draws in the default layout (True): their programs are compiled
    # already, and the other layout must not reuse them.
    with jax.threefry_partitionable(partitionable):
        for shape, dtype in [((256, 768), jnp.float32), ((2, 3, 5, 7), jnp.float32),
                             ((3, 5, 2), jnp.bfloat16)]:
            ours = _draws.uniform(KEYS["typed key"], shape, dtype, -1.0, 1.0)
            theirs = jax.random.uniform(KEYS["typed key"], shape, dtype, -1.0, 1.0)
            np.testing.assert_array_equal(_bits(ours), _bits(theirs))


@pytest.mark.parametrize("kind", KEYS)
@pytest.mark.parametrize("n", [1, 2, 6])
def test_split_gives_jax_random_split_s_keys(n, kind):
    ours, theirs = _draws.split(KEYS[kind], n), list(jax.random.split(KEYS[kind], n))
    assert len(ours) == n
    data = jax.random.key_data if kind == "typed key" else np.asarray
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(data(a), data(b))


def test_a_traced_key_draws_through_jax_random():
    key = KEYS["typed key"]
    draw = jax.jit(lambda k: _draws.uniform(k, (4, 3), jnp.float32, -2.0, 2.0))
    np.testing.assert_array_equal(draw(key), jax.random.uniform(key, (4, 3), jnp.float32, -2.0, 2.0))
    first, second = jax.jit(lambda k: tuple(_draws.split(k, 2)))(key)
    np.testing.assert_array_equal(jax.random.key_data(second),
                                  jax.random.key_data(jax.random.split(key)[1]))


def test_setup_draws_a_dense_layer_as_lux_describes_it_from_jax_random():
    # Lux's Dense (src/layers/basic.jl): weight kaiming_uniform with gain 1 → U(±√3/√in), bias
    # U(±1/√in); setup splits its key into the parameters' and the states', the Dense its key
    # into the weight's and the bias's.
    ps, _ = luxc.setup(jax.random.key(0), nn.Dense(5, 3))
    kp, _ = jax.random.split(jax.random.key(0))
    kw, kb = jax.random.split(kp)
    w, b = np.sqrt(3 / 5), 1 / np.sqrt(5)
    np.testing.assert_array_equal(ps["weight"], jax.random.uniform(kw, (3, 5), jnp.float32, -w, w))
    np.testing.assert_array_equal(ps["bias"], jax.random.uniform(kb, (3,), jnp.float32, -b, b))


def test_setup_under_jit_gives_the_eager_parameters():
    model = nn.Chain(nn.Dense(4, 8, jax.nn.relu), nn.Stack(nn.Dense(8, 8, jnp.tanh), 3))
    eager, _ = luxc.setup(jax.random.key(5), model)
    traced, _ = jax.jit(lambda k: luxc.setup(k, model))(jax.random.key(5))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced)):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_setup_runs_under_disable_jit_and_draws_as_jax_random_does_there():
    # A compiled executable refuses to run under jax.disable_jit: the draws go op by op, as
    # jax.random's own do there (whose last bit can differ from its jitted draw's).
    with jax.disable_jit():
        ps, _ = luxc.setup(jax.random.key(0), nn.Dense(5, 3))
        kp, _ = jax.random.split(jax.random.key(0))
        kw, kb = jax.random.split(kp)
        w = np.sqrt(3 / 5)
        expected = jax.random.uniform(kw, (3, 5), jnp.float32, -w, w)
    np.testing.assert_array_equal(_bits(ps["weight"]), _bits(expected))


def test_a_plain_draw_runs_luxc_s_compiled_program():
    # The speed is the point: a typed key on the CPU, Python bounds, a static shape.
    before = _draws._compiled.cache_info()
    _draws.uniform(jax.random.key(9), (17, 3), jnp.float32, -1.0, 1.0)
    _draws.uniform(jax.random.key(10), (17, 3), jnp.float32, -0.5, 0.5)
    after = _draws._compiled.cache_info()
    assert after.currsize > before.currsize or after.hits > before.hits


@pytest.mark.parametrize("dtype, bound", [(jnp.bfloat16, 1 + 2**-8 + 2**-30),
                                          (jnp.float16, 1 + 2**-11 + 2**-30)])
def test_a_bound_is_rounded_as_jax_random_rounds_it(dtype, bound):
    # jax.random rounds a Python bound to float32, then to dtype: rounding it to dtype at
    # once gave other bits (an adversary's find: Dense(66835, 2) in bf16 drew 90905 weights
    # differently).
    key = KEYS["typed key"]
    ours = _draws.uniform(key, (64,), dtype, -bound, bound)
    np.testing.assert_array_equal(_bits(ours), _bits(jax.random.uniform(key, (64,), dtype, -bound, bound)))


def test_a_concrete_key_closed_over_by_jit_draws():
    key = jax.random.key(0)
    traced, _ = jax.jit(lambda: luxc.setup(key, nn.Dense(4, 3)))()
    eager, _ = luxc.setup(key, nn.Dense(4, 3))
    np.testing.assert_array_equal(_bits(traced["weight"]), _bits(eager["weight"]))
    assert jax.eval_shape(lambda: luxc.setup(key, nn.Dense(4, 3)))[0]["bias"].shape == (3,)


@pytest.mark.parametrize("shape", [3, (np.int64(2), 3), [jnp.int32(2), 3]], ids=str)
def test_any_shape_jax_random_takes_draws_the_same(shape):
    key = KEYS["typed key"]
    ours, theirs = _draws.uniform(key, shape, jnp.float32), jax.random.uniform(key, shape, jnp.float32)
    np.testing.assert_array_equal(_bits(ours), _bits(theirs))


def test_a_split_into_many_keys_or_a_jax_int_count_is_jax_random_s():
    key = KEYS["typed key"]
    for n in (_draws.MAX_SPLIT + 1, jnp.int32(3)):
        ours, theirs = _draws.split(key, n), list(jax.random.split(key, n))
        assert len(ours) == len(theirs)
        np.testing.assert_array_equal(jax.random.key_data(ours[-1]), jax.random.key_data(theirs[-1]))


def test_dtype_float_warns_no_more_than_jax_random():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = _draws.uniform(KEYS["typed key"], (2,), float)
    np.testing.assert_array_equal(ours, jax.random.uniform(KEYS["typed key"], (2,), float))


def test_device_and_mesh_contexts_place_a_draw_where_jax_random_does():
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from luxc.nn import _draws
        key, d2 = jax.random.key(0), jax.devices()[2]
        def same(a, b):
            assert a.devices() == b.devices() and a.sharding == b.sharding, (a.sharding, b.sharding)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        with jax.default_device(d2):
            same(_draws.uniform(key, (3,), jnp.float32), jax.random.uniform(key, (3,), jnp.float32))
        same(_draws.uniform(key, (3,), jnp.float32), jax.random.uniform(key, (3,), jnp.float32))
        with jax.set_mesh(jax.make_mesh((4,), ("x",))):
            same(_draws.uniform(key, (3,), jnp.float32), jax.random.uniform(key, (3,), jnp.float32))
        same(_draws.uniform(key, (3,), jnp.float32), jax.random.uniform(key, (3,), jnp.float32))
        print("ok")
    """)
    r = run_python(code, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
