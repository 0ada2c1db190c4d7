"""luxc.distributed and ``luxc launch``: the same training on 1 device, 8 host devices and
2 processes x 4 devices gives the same parameters; a dead process stops the launch."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import distributed
from tests.support import ROOT, run_python

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}

# The model, data and one-device reference every multi-device script shares: three Adam steps
# of an MLP on 64 rows, in plain jax and optax (no luxc step, no pass) on one device.
COMMON = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax, luxc
    from luxc import nn

    def fresh():
        model = nn.Chain(nn.Dense(4, 32, jax.nn.relu), nn.Dense(32, 8))
        ps, st = luxc.setup(jax.random.key(0), model)
        return luxc.TrainState(model, ps, st, optax.adam(1e-2))

    x = np.random.default_rng(1).standard_normal((64, 4), dtype=np.float32)  # numpy: no compile
    y = np.eye(8, dtype=np.float32)[np.arange(64) % 8]
    STEPS = 3
    with jax.default_device(jax.local_devices()[0]):
        ref = fresh()

        @jax.jit  # one program, not op by op: this runs in every process of every test
        def adam_step(ps, opt_state):
            grads = jax.grad(lambda p: luxc.MSELoss()(ref.model, p, ref.states, (x, y))[0])(ps)
            updates, opt_state = ref.optimizer.update(grads, opt_state, ps)
            return optax.apply_updates(ps, updates), opt_state

        ps, opt_state = ref.parameters, ref.optimizer_state
        for _ in range(STEPS):
            ps, opt_state = adam_step(ps, opt_state)
        ref = [np.asarray(a) for a in jax.tree.leaves(ps)]

    def max_diff(tree):
        return max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(ref, jax.tree.leaves(tree)))

    def specs(tree):
        return [str(a.sharding.spec) for a in jax.tree.leaves(tree)]
""")


def _result(r: subprocess.CompletedProcess, marker: str = "RESULT") -> list[dict]:
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return [json.loads(line.split(marker, 1)[1]) for line in r.stdout.splitlines() if marker in line]


# --- one process, one device: arguments and the placement rule --------------------------------

def _ts():
    model = luxc.nn.Dense(3, 16)
    ps, st = luxc.setup(jax.random.key(0), model)
    return luxc.TrainState(model, ps, st, optax.adam(1e-3))


@pytest.mark.parametrize("shape, size, expected", [
    ((512, 784), 8, (None, "data")),  # the largest dimension wins
    ((784, 512), 8, ("data",)),
    ((30, 16), 8, (None, "data")),    # 30 is not divisible by 8: the next largest that is
    ((16, 16), 8, ("data",)),         # the first of equals
    ((10, 3), 8, ()),                 # nothing divisible: replicated
    ((), 8, ()),                      # a scalar (Adam's count): replicated
    ((4,), 8, ()),                    # smaller than the axis: replicated
])
def test_fsdp_splits_the_largest_divisible_dimension(shape, size, expected):
    assert tuple(distributed.fsdp_spec(shape, size, "data")) == expected


def test_shard_rejects_an_unknown_strategy_naming_the_allowed_ones():
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match=r"strategy must be one of \('data', 'fsdp'\); received 'zero3'"):
        distributed.shard(_ts(), mesh, strategy="zero3")


def test_shard_rejects_an_axis_the_mesh_does_not_have():
    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(ValueError, match=r"axis must be one of the mesh's axes \('batch',\); received 'data'"):
        distributed.shard(_ts(), mesh)
    with pytest.raises(ValueError, match="received 'data'"):
        distributed.shard_batch((jnp.ones((4, 3)),), mesh)


def test_shard_rejects_something_that_is_not_a_mesh():
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh .*received list"):
        distributed.shard(_ts(), [jax.devices()[0]])


def test_a_scalar_in_the_batch_is_named_in_the_error():
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match=r"shard_batch: batch\[1\] has no rows"):
        distributed.shard_batch((jnp.ones((4, 3)), jnp.float32(1.0)), mesh)


def test_initialize_is_a_no_op_in_one_process(monkeypatch):
    for name in (distributed.NUM_PROCESSES_ENV, "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                 "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    distributed.initialize()
    distributed.initialize()
    assert jax.process_count() == 1 and not jax.distributed.is_initialized()


def test_a_single_device_shard_trains_like_the_unsharded_state():
    x, y = jnp.ones((8, 3)), jnp.zeros((8, 16))
    mesh = jax.make_mesh((1,), ("data",))
    _, _, _, ref = luxc.training.single_train_step(luxc.AutoJAX(), luxc.MSELoss(), (x, y), _ts())
    ts = distributed.shard(_ts(), mesh, strategy="fsdp")
    data = distributed.shard_batch((x, y), mesh)
    _, _, _, out = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
    for a, b in zip(jax.tree.leaves(ref.parameters), jax.tree.leaves(out.parameters)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --- 8 host devices in one process ------------------------------------------------------------

EIGHT_DEVICES = COMMON + textwrap.dedent("""
    import tempfile
    assert jax.device_count() == 8
    mesh8 = jax.make_mesh((8,), ("data",))
    mesh4 = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    for strategy in ("data", "fsdp"):
        ts = luxc.distributed.shard(fresh(), mesh8, strategy=strategy)
        placed = specs((ts.parameters, ts.optimizer_state))
        data = luxc.distributed.shard_batch((x, y), mesh8)
        for _ in range(STEPS):
            _, loss, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
        w = ts.parameters["layer_1"]["weight"]
        out = {"strategy": strategy, "diff": max_diff(ts.parameters), "placed": placed,
               "after": specs((ts.parameters, ts.optimizer_state)),
               "misses": luxc.cache_info(ts).misses,
               "w_devices": len(w.sharding.device_set),
               "w_shards": sorted({tuple(s.data.shape) for s in w.addressable_shards}),
               "w_shape": list(w.shape)}
        if strategy == "fsdp":
            # A checkpoint at step 3, then two more steps, against the same two steps resumed
            # from the checkpoint into a freshly sharded state.
            path = tempfile.mkdtemp() + "/ckpt.safetensors"
            luxc.save_state(path, ts)
            step = lambda t: luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, t)[3]
            resumed = luxc.load_state(path, like=luxc.distributed.shard(fresh(), mesh8, strategy="fsdp"))
            out["loaded_specs"] = specs((resumed.parameters, resumed.optimizer_state))
            out["loaded_step"] = resumed.step
            a, b = step(step(ts)), step(step(resumed))
            out["resumed_bit_identical"] = all(
                np.array_equal(u, v) for u, v in zip(jax.tree.leaves((a.parameters, a.optimizer_state)),
                                                     jax.tree.leaves((b.parameters, b.optimizer_state))))
            ts = luxc.distributed.shard(a, mesh4, strategy=strategy)
            data4 = luxc.distributed.shard_batch((x, y), mesh4)
            for _ in range(2):
                _, _, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data4, ts)
            out["misses_after_new_mesh"] = luxc.cache_info(ts).misses
            out["w_devices_after_new_mesh"] = len(ts.parameters["layer_1"]["weight"].sharding.device_set)
        print("RESULT", json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_devices():
    return {r["strategy"]: r for r in _result(run_python(EIGHT_DEVICES, env=EIGHT))}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["data", "fsdp"])
def test_eight_devices_train_like_one(eight_devices, strategy):
    assert eight_devices[strategy]["diff"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["data", "fsdp"])
def test_the_compiled_step_keeps_the_shardings_it_was_given(eight_devices, strategy):
    r = eight_devices[strategy]
    assert r["after"] == r["placed"]  # no resharding between steps
    assert r["misses"] == 1           # so every step after the first is a cache hit


@pytest.mark.slow
def test_data_parallel_replicates_the_parameters(eight_devices):
    r = eight_devices["data"]
    assert r["w_devices"] == 8 and r["w_shards"] == [r["w_shape"]]


@pytest.mark.slow
def test_fsdp_really_splits_the_parameters(eight_devices):
    r = eight_devices["fsdp"]
    assert r["w_shape"] == [32, 4]
    assert r["w_shards"] == [[4, 4]]  # 32 rows over 8 devices
    assert "P('data',)" in r["placed"] and "P(None, 'data')" in r["placed"]
    assert "P()" in r["placed"]       # Adam's count


@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_bit_identically(eight_devices):
    r = eight_devices["fsdp"]
    assert r["loaded_step"] == 3
    assert r["loaded_specs"] == r["placed"]  # loaded with the shardings of `like`
    assert r["resumed_bit_identical"]


@pytest.mark.slow
def test_a_new_mesh_recompiles_once(eight_devices):
    r = eight_devices["fsdp"]
    assert r["misses_after_new_mesh"] == 2 and r["w_devices_after_new_mesh"] == 4


@pytest.mark.slow
def test_the_example_runs_on_eight_devices_with_fsdp():
    example = str(ROOT / "examples" / "data_parallel.py")
    r = subprocess.run([sys.executable, example, "--strategy", "fsdp", "--steps", "3"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, **EIGHT})
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("1 process(es), 8 devices, strategy fsdp: layer_2.weight (64, 64) held as 8 local "
            "pieces of (8, 64); 2 hits, 1 miss") in r.stdout


# --- 2 processes x 4 devices through luxc launch ----------------------------------------------

LAUNCHED = textwrap.dedent("""
    import luxc
    luxc.distributed.initialize()
""") + COMMON + textwrap.dedent("""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    rank, rows = jax.process_index(), 64 // jax.process_count()
    data = luxc.distributed.shard_batch((x[rank * rows:(rank + 1) * rows],
                                         y[rank * rows:(rank + 1) * rows]), mesh)
    for strategy in ("data", "fsdp"):
        ts = luxc.distributed.shard(fresh(), mesh, strategy=strategy)
        for _ in range(STEPS):
            _, loss, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts,
                                                              sync=True)
        from jax.experimental import multihost_utils
        full = multihost_utils.process_allgather(ts.parameters, tiled=True)
        w = ts.parameters["layer_1"]["weight"]
        local_shards = sorted({tuple(s.data.shape) for s in w.addressable_shards})
        resumed = {}
        if sys.argv[1:2] == ["checkpoint"] and strategy == "fsdp":
            # every process saves and loads; process 0 writes the gathered state
            luxc.save_state(sys.argv[2], ts)
            loaded = luxc.load_state(sys.argv[2], like=luxc.distributed.shard(fresh(), mesh, strategy="fsdp"))
            resumed = {"loaded_specs_equal": specs(loaded.parameters) == specs(ts.parameters)}
            step = lambda t: luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, t, sync=True)[3]
            a, b = [multihost_utils.process_allgather(t.parameters, tiled=True) for t in (step(ts), step(loaded))]
            resumed["resumed_bit_identical"] = all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        print("RESULT", json.dumps({**resumed, "rank": rank, "strategy": strategy, "diff": max_diff(full),
                                    "processes": jax.process_count(), "devices": jax.device_count(),
                                    "local_shards": local_shards}))
""")


def _launch(tmp_path, *args, timeout=240):
    script = tmp_path / "train.py"
    script.write_text(LAUNCHED)
    cmd = [sys.executable, "-m", "luxc.cli", "launch", "-n", "2", "--devices-per-process", "4",
           str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "XLA_FLAGS": ""})


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Both strategies trained by 2 processes x 4 devices; the FSDP state saved and resumed."""
    tmp_path = tmp_path_factory.mktemp("two")
    path = tmp_path / "two.safetensors"
    return path, _result(_launch(tmp_path, "checkpoint", str(path)))


@pytest.mark.slow
def test_two_processes_end_with_the_single_process_parameters(two_processes):
    _, results = two_processes
    assert sorted((r["rank"], r["strategy"]) for r in results) == [
        (0, "data"), (0, "fsdp"), (1, "data"), (1, "fsdp")]
    for r in results:
        assert r["processes"] == 2 and r["devices"] == 8
        assert r["diff"] < 1e-5
        # the (32, 4) weight: whole on each local device, or 4 of its 8 row blocks
        assert r["local_shards"] == ([[32, 4]] if r["strategy"] == "data" else [[4, 4]])


@pytest.mark.slow
def test_a_checkpoint_of_two_processes_resumes_in_both_and_loads_in_one(two_processes):
    path, results = two_processes
    fsdp = [r for r in results if r["strategy"] == "fsdp"]
    assert sorted(r["rank"] for r in fsdp) == [0, 1]
    assert all(r["resumed_bit_identical"] and r["loaded_specs_equal"] for r in fsdp)
    # The same file in this one-device process: the single-process reference parameters.
    common: dict = {}
    exec(COMMON, common)
    loaded = luxc.load_state(path, like=common["fresh"]())
    assert loaded.step == 3
    assert common["max_diff"](loaded.parameters) < 1e-5


DIES = textwrap.dedent("""
    import threading
    import luxc
    luxc.distributed.initialize()
    import jax, jax.numpy as jnp
    from jax.experimental import multihost_utils
    multihost_utils.process_allgather(jnp.ones(2))  # both processes are up and joined
    if jax.process_index() == 1:
        print("DIES", flush=True)
        raise RuntimeError("this process dies")
    try:
        multihost_utils.process_allgather(jnp.ones(2))  # waits for process 1, which never comes
        print("RESULT", flush=True)
    except Exception:  # Gloo sees the peer gone; jax's coordination alone waits ~100 s
        pass
    threading.Event().wait()  # the survivor never ends by itself: only launch can stop it
""")


@pytest.mark.slow
def test_a_dying_process_makes_launch_fail_fast_with_its_exit_code(tmp_path):
    script = tmp_path / "dies.py"
    script.write_text(DIES)
    r = subprocess.run([sys.executable, "-m", "luxc.cli", "launch", "-n", "2", str(script)],
                       capture_output=True, text=True, timeout=240, env={**os.environ, "XLA_FLAGS": ""})
    assert r.returncode == 1, r.stderr[-2000:]
    assert "[1] DIES" in r.stdout  # and the survivor waits forever: launch returned by stopping it
    assert "[1] RuntimeError: this process dies" in r.stderr
    assert "luxc launch: process 1 exited with code 1" in r.stderr
    assert "RESULT" not in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_every_process(tmp_path, sig, code, said):
    # SIGTERM: `kill`, or a job scheduler stopping the job
    script = tmp_path / "wait.py"
    script.write_text("import os, time\nprint('PID', os.getpid(), flush=True)\ntime.sleep(120)\n")
    launcher = subprocess.Popen([sys.executable, "-m", "luxc.cli", "launch", "-n", "2", str(script)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [int(launcher.stdout.readline().split("PID")[1]) for _ in range(2)]
    launcher.send_signal(sig)
    out, err = launcher.communicate(timeout=30)
    assert launcher.returncode == code, err
    assert f"luxc launch: {said}; stopping every process" in err
    assert "KeyboardInterrupt" not in err and "Traceback" not in err  # the peers stop quietly
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
