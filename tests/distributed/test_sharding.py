"""The compiled step on several devices (8 host CPU devices, in one subprocess for the file)."""

import textwrap

import pytest

from tests.support import run_python

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def eight_devices() -> str:
    """What SCRIPT and LENET (below) print, run one after the other in one 8-device process
    (the jax start, the device set-up and the reference's definition paid once)."""
    r = run_python(REFERENCE + SCRIPT + LENET,
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


# The one-device reference both scripts compare with: one optimiser step in plain jax and optax
# (no luxc step, no pass), one program; and the largest difference of the parameters from it.
REFERENCE = textwrap.dedent("""
    import jax, numpy as np, optax

    def reference(loss, data, ts):
        @jax.jit
        def step(ps, opt_state):
            value, grads = jax.value_and_grad(lambda p: loss(ts.model, p, ts.states, data)[0])(ps)
            updates, _ = ts.optimizer.update(grads, opt_state, ps)
            return value, optax.apply_updates(ps, updates)

        return step(ts.parameters, ts.optimizer_state)

    def max_diff(ref, out):
        return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out.parameters)))
""")

SCRIPT = textwrap.dedent("""
    import jax, numpy as np, optax, luxc
    from luxc import nn
    from jax.sharding import NamedSharding, PartitionSpec as P
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    model = nn.Chain(nn.Dense(4, 32, jax.nn.relu), nn.Dense(32, 3))
    ps, st = luxc.setup(jax.random.key(0), model)
    x = np.random.default_rng(1).standard_normal((64, 4), dtype=np.float32)  # numpy: no compile
    y = np.eye(3, dtype=np.float32)[np.arange(64) % 3]
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    l0, ref = reference(luxc.MSELoss(), (x, y), ts)
    batch = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    ts = ts.replace(parameters=jax.device_put(ts.parameters, replicated),
                    optimizer_state=jax.device_put(ts.optimizer_state, replicated))
    data = (jax.device_put(x, batch), jax.device_put(y, batch))
    _, l1, _, out = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
    w = out.parameters["layer_1"]["weight"]
    print("DATA_PARALLEL", float(l0), float(l1), max_diff(ref, out), len(w.sharding.device_set))
""")


def test_a_data_parallel_step_equals_the_single_device_one(eight_devices):
    (line,) = [line for line in eight_devices.splitlines() if line.startswith("DATA_PARALLEL")]
    l0, l1, diff, devices = line.split()[1:]
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    assert float(diff) < 1e-6
    assert int(devices) == 8  # the updated parameters stay replicated over the mesh


LENET = textwrap.dedent("""
    import jax, numpy as np, optax, luxc
    from luxc import nn
    from luxc.examples.lenet import factory

    def sequence_model(batch, tokens=6):  # Dense layers on (batch, tokens, features): dot_flatten's case
        model = nn.Chain(nn.LayerNorm(8), nn.Dense(8, 16, jax.nn.gelu), nn.Dense(16, 8))
        ps, st = luxc.setup(jax.random.key(0), model)
        x = np.random.default_rng(1).standard_normal((batch, tokens, 8), dtype=np.float32)  # no compile
        return luxc.MSELoss(), (x, np.tanh(x)), luxc.TrainState(model, ps, st, optax.adam(1e-2))

    mesh = jax.make_mesh((8,), ("data",))
    for name, make in (("lenet", factory), ("sequence", sequence_model)):
        loss, (x, y), ts = make(16)
        l0, ref = reference(loss, (x, y), ts)
        for strategy in ("data", "fsdp"):
            sharded = luxc.distributed.shard(ts, mesh, strategy=strategy)
            data = luxc.distributed.shard_batch((x, y), mesh)
            cs = luxc.compile_step(loss, data, sharded)
            rewrites = {r.name: r.rewrites for r in cs.pass_report if r.rewrites}
            _, l1, _, out = cs(sharded, data)
            diff = max_diff(ref, out)
            kept = all(a.sharding == b.sharding for a, b in
                       zip(jax.tree.leaves(sharded.parameters), jax.tree.leaves(out.parameters)))
            print("RESULT", name, strategy, float(l0), float(l1), diff,
                  ",".join(f"{k}={v}" for k, v in rewrites.items()), kept)

    # Tokens split over the devices (sequence parallelism): the default pipeline leaves out
    # dot_flatten, which would merge the split axis into the batch and gather the activations.
    import re
    from jax.sharding import NamedSharding, PartitionSpec as P
    loss, (x, y), ts = sequence_model(4, tokens=64)
    l0, ref = reference(loss, (x, y), ts)
    auto = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    ts = luxc.distributed.shard(ts, auto, strategy="data")
    data = jax.device_put((x, y), NamedSharding(auto, P(None, "data")))
    cs = luxc.compile_step(loss, data, ts)
    names = [r.name for r in cs.pass_report]
    gathers = len(re.findall(" all-gather(?:-start)?[(]", cs.as_text("hlo")))
    _, l1, _, out = cs(ts, data)
    diff = max_diff(ref, out)
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


def test_passes_rewrite_a_sharded_module_and_keep_the_numbers_and_shardings(eight_devices):
    rows = [line.split()[1:] for line in eight_devices.splitlines() if line.startswith("RESULT")]
    assert [tuple(row[:2]) for row in rows] == list(REWRITES)
    for name, strategy, l0, l1, diff, rewrites, kept in rows:
        assert rewrites == REWRITES[name, strategy]
        assert float(l0) == pytest.approx(float(l1), rel=1e-5)
        assert float(diff) < 1e-5
        assert kept == "True"  # the rewritten step returns the parameters as it received them
    (tokens,) = [line.split()[1:] for line in eight_devices.splitlines() if line.startswith("TOKENS")]
    in_pipeline, gathers, l0, l1, diff = tokens
    assert in_pipeline == "False" and int(gathers) == 0  # activations stay split by tokens
    assert float(l0) == pytest.approx(float(l1), rel=1e-5)
    assert float(diff) < 1e-5
