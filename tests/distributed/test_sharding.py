"""The compiled step on several devices (8 host CPU devices, in a subprocess)."""

import textwrap

import pytest

from tests.support import run_python

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, optax, luxc
    from luxc import nn
    from jax.sharding import NamedSharding, PartitionSpec as P
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    model = nn.Chain(nn.Dense(4, 32, jax.nn.relu), nn.Dense(32, 3))
    ps, st = luxc.setup(jax.random.key(0), model)
    x = jax.random.normal(jax.random.key(1), (64, 4))
    y = jax.nn.one_hot(jnp.arange(64) % 3, 3)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    _, l0, _, ref = luxc.training.single_train_step(luxc.AutoJAX(), luxc.MSELoss(), (x, y), ts)
    batch = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    ts = ts.replace(parameters=jax.device_put(ts.parameters, replicated),
                    optimizer_state=jax.device_put(ts.optimizer_state, replicated))
    data = (jax.device_put(x, batch), jax.device_put(y, batch))
    _, l1, _, out = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(ref.parameters), jax.tree.leaves(out.parameters)))
    w = out.parameters["layer_1"]["weight"]
    print("RESULT", float(l0), float(l1), diff, len(w.sharding.device_set))
""")


def test_a_data_parallel_step_equals_the_single_device_one():
    r = run_python(SCRIPT, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert r.returncode == 0, r.stderr[-2000:]
    l0, l1, diff, devices = r.stdout.split("RESULT")[-1].split()
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    assert float(diff) < 1e-6
    assert int(devices) == 8  # the updated parameters stay replicated over the mesh


LENET = textwrap.dedent("""
    import jax, jax.numpy as jnp, optax, luxc
    from luxc import nn
    from luxc.examples.lenet import factory

    def sequence_model(batch):  # Dense layers on (batch, tokens, features): dot_flatten's case
        model = nn.Chain(nn.LayerNorm(8), nn.Dense(8, 16, jax.nn.gelu), nn.Dense(16, 8))
        ps, st = luxc.setup(jax.random.key(0), model)
        x = jax.random.normal(jax.random.key(1), (batch, 6, 8))
        return luxc.MSELoss(), (x, jnp.tanh(x)), luxc.TrainState(model, ps, st, optax.adam(1e-2))

    mesh = jax.make_mesh((8,), ("data",))
    for name, make in (("lenet", factory), ("sequence", sequence_model)):
        loss, (x, y), ts = make(16)
        _, l0, _, ref = luxc.training.single_train_step(luxc.AutoJAX(), loss, (x, y), ts)
        for strategy in ("data", "fsdp"):
            sharded = luxc.distributed.shard(ts, mesh, strategy=strategy)
            data = luxc.distributed.shard_batch((x, y), mesh)
            cs = luxc.compile_step(loss, data, sharded)
            rewrites = {r.name: r.rewrites for r in cs.pass_report if r.rewrites}
            _, l1, _, out = cs(sharded, data)
            diff = max(float(jnp.max(jnp.abs(a - b)))
                       for a, b in zip(jax.tree.leaves(ref.parameters), jax.tree.leaves(out.parameters)))
            kept = all(a.sharding == b.sharding for a, b in
                       zip(jax.tree.leaves(sharded.parameters), jax.tree.leaves(out.parameters)))
            print("RESULT", name, strategy, float(l0), float(l1), diff,
                  ",".join(f"{k}={v}" for k, v in rewrites.items()), kept)

    # Tokens split over the devices (sequence parallelism): the default pipeline leaves out
    # dot_flatten, which would merge the split axis into the batch and gather the activations.
    import re
    from jax.sharding import NamedSharding, PartitionSpec as P
    loss, (x, y), ts = sequence_model(4)
    x = jax.random.normal(jax.random.key(1), (4, 64, 8))
    _, l0, _, ref = luxc.training.single_train_step(luxc.AutoJAX(), loss, (x, jnp.tanh(x)), ts)
    auto = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    ts = luxc.distributed.shard(ts, auto, strategy="data")
    data = jax.device_put((x, jnp.tanh(x)), NamedSharding(auto, P(None, "data")))
    cs = luxc.compile_step(loss, data, ts)
    names = [r.name for r in cs.pass_report]
    gathers = len(re.findall(" all-gather(?:-start)?[(]", cs.as_text("hlo")))
    _, l1, _, out = cs(ts, data)
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(ref.parameters), jax.tree.leaves(out.parameters)))
    print("TOKENS", "dot_flatten" in names, gathers, float(l0), float(l1), diff)
""")

_LENET = "maxpool_grad_select=2,conv_few_channels=1,conv_input_grad_dot=1"
REWRITES = {
    ("lenet", "data"): _LENET + ",dot_flatten=1,relu_mask_from_output=4",
    # FSDP splits the convolution kernels along an inner axis, which takes dot_flatten out of
    # the default pipeline (runtime/compiling/_options.py, splits_an_inner_axis).
    ("lenet", "fsdp"): _LENET + ",relu_mask_from_output=4",
    ("sequence", "data"): "dot_flatten=6",  # two layers: forward, input and weight gradient each
    ("sequence", "fsdp"): "dot_flatten=6",  # its weights are matrices: nothing split inside
}


def test_passes_rewrite_a_sharded_module_and_keep_the_numbers_and_shardings():
    r = run_python(LENET, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("RESULT")]
    assert [tuple(row[:2]) for row in rows] == list(REWRITES)
    for name, strategy, l0, l1, diff, rewrites, kept in rows:
        assert rewrites == REWRITES[name, strategy]
        assert float(l0) == pytest.approx(float(l1), rel=1e-5)
        assert float(diff) < 1e-5
        assert kept == "True"  # the rewritten step returns the parameters as it received them
    (tokens,) = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("TOKENS")]
    in_pipeline, gathers, l0, l1, diff = tokens
    assert in_pipeline == "False" and int(gathers) == 0  # activations stay split by tokens
    assert float(l0) == pytest.approx(float(l1), rel=1e-5)
    assert float(diff) < 1e-5
