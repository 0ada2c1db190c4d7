"""Bad inputs to training (issue 18, training side): each is refused in one line in luxc's terms,
or handled, instead of aborting the process or training silently on garbage."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from tests.support import run_python

TWO = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

# --- placement on 2 host devices --------------------------------------------------------------

# Every case in one process; each prints one RESULT line: the error's first line, or the loss.
PLACEMENT = textwrap.dedent("""
    import json
    import jax, numpy as np, optax, luxc
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

    def fresh():
        model = luxc.nn.Dense(4, 2)
        ps, st = luxc.setup(jax.random.key(0), model)
        return luxc.TrainState(model, ps, st, optax.adam(1e-2))

    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 4)))
    y = np.asarray(jax.random.normal(jax.random.key(2), (8, 2)))
    _, eager, _, _ = luxc.training.single_train_step(luxc.AutoJAX(), luxc.MSELoss(), (x, y), fresh())
    print("RESULT", json.dumps({"case": "eager", "loss": float(eager)}), flush=True)

    def mesh(kind):
        return Mesh(np.array(jax.devices()), ("data",), axis_types=(kind,))

    def placed(m):
        return tuple(jax.device_put(a, NamedSharding(m, P("data"))) for a in (x, y))

    def attempt(case, data, ts):
        try:
            _, loss, _, _ = luxc.training.single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
            out = {"case": case, "loss": float(loss)}
        except Exception as e:
            out = {"case": case, "error": type(e).__name__, "message": str(e)}
        print("RESULT", json.dumps(out), flush=True)

    attempt("split batch, one-device state", placed(mesh(AxisType.Auto)), fresh())
    on_zero = fresh()
    on_zero = on_zero.replace(parameters=jax.device_put(on_zero.parameters, jax.devices()[0]),
                              optimizer_state=jax.device_put(on_zero.optimizer_state,
                                                             jax.devices()[0]))
    attempt("split batch, state committed to device 0", placed(mesh(AxisType.Auto)), on_zero)
    attempt("explicit batch, one-device state", placed(mesh(AxisType.Explicit)), fresh())
    explicit = mesh(AxisType.Explicit)
    sharded = luxc.distributed.shard(fresh(), explicit)
    print("RESULT", json.dumps({"case": "mesh after shard", "types": str(explicit.axis_types)}))
    attempt("explicit batch, sharded state", placed(explicit), sharded)
    attempt("shard_batch on the explicit mesh", luxc.distributed.shard_batch((x, y), explicit),
            sharded)
    attempt("default-placed batch, sharded state", (jax.numpy.asarray(x), jax.numpy.asarray(y)),
            sharded)
    by_hand = fresh()
    replicated = NamedSharding(explicit, P())
    by_hand = by_hand.replace(parameters=jax.device_put(by_hand.parameters, replicated),
                              optimizer_state=jax.device_put(by_hand.optimizer_state, replicated))
    attempt("explicit batch, explicit state", placed(explicit), by_hand)
    on_one = tuple(jax.device_put(a, jax.devices()[1]) for a in (x, y))
    attempt("batch on device 1, sharded state", on_one, sharded)
""")


@pytest.fixture(scope="module")
def placement():
    r = run_python(PLACEMENT, env=TWO, timeout=200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]  # 134: the all-reduce abort
    return {o["case"]: o for o in (json.loads(line.split("RESULT", 1)[1])
                                   for line in r.stdout.splitlines() if "RESULT" in line)}


def _one_line(result: dict, *parts: str) -> None:
    assert result.get("error") == "ValueError", result
    message = result["message"]
    assert "\n" not in message and message.startswith("single_train_step: ")
    for part in parts:
        assert part in message, message


def _trains_like_autojax(placement: dict, case: str) -> None:
    assert placement[case]["loss"] == pytest.approx(placement["eager"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_a_split_batch_with_a_default_placed_state_trains_like_autojax(placement):
    # The state jax placed by default moves onto the batch's mesh, as under jax.jit.
    _trains_like_autojax(placement, "split batch, one-device state")


@pytest.mark.slow
def test_a_split_batch_with_a_state_committed_to_one_device_is_refused_before_it_runs(placement):
    _one_line(placement["split batch, state committed to device 0"], "data[0] is on devices [0, 1]",
              "parameters['bias'] is on device 0", "ts = luxc.distributed.shard(ts, mesh)")


@pytest.mark.slow
def test_a_batch_on_an_explicit_mesh_is_refused_in_one_line_not_in_the_trace(placement):
    _one_line(placement["explicit batch, one-device state"], "data[0] is on devices [0, 1]",
              "parameters['bias'] is on device 0", "ts = luxc.distributed.shard(ts, mesh)")
    _one_line(placement["explicit batch, sharded state"],
              "parameters['bias'] is on a mesh with axes {'data': 'Auto'} but data[0] on one "
              "with axes {'data': 'Explicit'}", "luxc.distributed.shard_batch(batch, mesh)")


@pytest.mark.slow
def test_a_state_and_batch_both_placed_by_hand_on_an_explicit_mesh_train(placement):
    _trains_like_autojax(placement, "explicit batch, explicit state")


@pytest.mark.slow
def test_shard_leaves_the_users_mesh_as_it_is(placement):
    assert placement["mesh after shard"]["types"] == "(Explicit,)"


@pytest.mark.slow
def test_shard_batch_on_the_users_explicit_mesh_trains_like_autojax(placement):
    for case in ("shard_batch on the explicit mesh", "default-placed batch, sharded state"):
        _trains_like_autojax(placement, case)


@pytest.mark.slow
def test_a_batch_committed_to_another_device_is_named_in_luxcs_terms(placement):
    _one_line(placement["batch on device 1, sharded state"], "parameters['bias'] is on devices [0, 1]",
              "data[0] is on device 1")


# --- the loss an objective returns ------------------------------------------------------------

def _ts(model=None):
    model = model or nn.Dense(3, 2)
    ps, st = luxc.setup(jax.random.key(0), model)
    return luxc.TrainState(model, ps, st, optax.sgd(0.1))


DATA = (jnp.ones((4, 3)), jnp.zeros((4, 2)))


TARGET = np.full((4, 2), 0.5, np.float32)


def python_float_loss(model, ps, st, data):
    y, st = model(data[0], ps, st)
    return float(np.mean(np.square(TARGET))), st, {}  # a number computed beside the model


def integer_loss(model, ps, st, data):
    y, st = model(data[0], ps, st)
    return jnp.sum(y > 0).astype(jnp.int32), st, {}


@pytest.mark.parametrize("backend", [luxc.AutoXLA(), luxc.AutoJAX(), luxc.AutoForwardDiff()])
def test_a_python_float_loss_is_refused_instead_of_training_with_zero_gradients(backend):
    with pytest.raises(luxc.training.ObjectiveError,
                       match=r"python_float_loss returned the loss as a float .*zero gradients"):
        luxc.training.single_train_step(backend, python_float_loss, DATA, _ts())


@pytest.mark.parametrize("backend", [luxc.AutoXLA(), luxc.AutoJAX()])
def test_an_integer_loss_is_refused_in_luxcs_terms(backend):
    with pytest.raises(luxc.training.ObjectiveError,
                       match=r"integer_loss returned a int32 loss; gradients need a real floating"):
        luxc.training.single_train_step(backend, integer_loss, DATA, _ts())


def test_an_integer_loss_can_still_be_evaluated():
    ts = _ts()
    loss, _, _ = luxc.training.compute_objective(luxc.AutoXLA(), integer_loss, DATA, ts)
    y = np.asarray(DATA[0]) @ np.asarray(ts.parameters["weight"]).T + np.asarray(ts.parameters["bias"])
    assert int(loss) == int(np.sum(y > 0))


# --- BatchNorm on an empty batch --------------------------------------------------------------

@pytest.mark.parametrize("backend", [luxc.AutoXLA(), luxc.AutoJAX()])
def test_an_empty_batch_through_batchnorm_is_refused_and_the_statistics_kept(backend):
    ts = _ts(nn.Chain(nn.Dense(3, 2), nn.BatchNorm(2)))
    before = jax.tree.map(np.asarray, ts.states)
    with pytest.raises(nn.LayerShapeError, match=r"BatchNorm\(2\): received an empty batch of "
                                                 r"shape \(0, 2\)"):
        luxc.training.single_train_step(backend, luxc.MSELoss(), (jnp.ones((0, 3)),
                                                                   jnp.zeros((0, 2))), ts)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, ts.states), before)


def test_batchnorm_in_test_mode_takes_an_empty_batch():
    model = nn.BatchNorm(2)
    ps, st = luxc.setup(jax.random.key(0), model)
    y, _ = model(jnp.ones((0, 2)), ps, luxc.testmode(st))
    assert y.shape == (0, 2)


# --- NaN data ---------------------------------------------------------------------------------

def test_nan_data_warns_when_the_step_compiles_naming_the_leaf():
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.warns(luxc.training.NonFiniteDataWarning,
                      match=r"single_train_step: data\[0\] has 1 non-finite value \(NaN or inf\), "
                            r"the first at index \(2, 1\)"):
        luxc.training.single_train_step(luxc.AutoXLA(), luxc.MSELoss(), (x, np.zeros((4, 2))),
                                        _ts())


def test_finite_data_compiles_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", luxc.training.NonFiniteDataWarning)
        luxc.training.single_train_step(luxc.AutoXLA(), luxc.MSELoss(), DATA, _ts())


# --- luxc launch ------------------------------------------------------------------------------

def _launch(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "luxc.cli", "launch", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "XLA_FLAGS": ""})


def test_launch_bounds_the_process_count_and_says_how_to_exceed_it(tmp_path):
    script = tmp_path / "noop.py"
    script.write_text("print('RAN', flush=True)\n")
    limit = 4 * os.cpu_count()
    r = _launch("-n", limit + 1, script)
    assert r.returncode == 1 and "RAN" not in r.stdout
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: launch: -n {limit + 1} is more than {limit} processes (4 per CPU of this "
        f"machine's {os.cpu_count()}; each is a jax runtime of ~116 MiB); use fewer, or add "
        f"--allow-many to start them anyway")


FORKS_AND_FAILS = textwrap.dedent("""
    import os, sys, time
    for new_session in (False, True):
        pid = os.fork()
        if pid == 0:
            if new_session:
                os.setsid()  # leaves the process group launch signals
            time.sleep(120)
            os._exit(0)
        print("SLEEPER", pid, flush=True)
    time.sleep(0.5)
    raise RuntimeError("the script fails after forking")
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_processes_a_failing_script_forked_do_not_outlive_launch(tmp_path):
    script = tmp_path / "forks.py"
    script.write_text(FORKS_AND_FAILS)
    r = _launch("-n", 1, script)
    sleepers = [int(line.split("SLEEPER")[1]) for line in r.stdout.splitlines() if "SLEEPER" in line]
    assert r.returncode == 1 and "the script fails after forking" in r.stderr, r.stderr[-2000:]
    assert len(sleepers) == 2
    left = [pid for pid in sleepers if _alive(pid)]  # launch reaps them before it returns
    for pid in left:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left
