"""`luxc run` on a dataset: shuffled batches, a log, checkpoints and an exact resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import luxc
from luxc.runtime.artifacts._tensor_codec import tensors_from_bytes
from tests.support import compile_factory, luxc_cli, luxc_cli_each

pytestmark = pytest.mark.slow

FACTORY = textwrap.dedent("""
    import jax, jax.numpy as jnp, optax, luxc
    from luxc import nn

    def factory():
        model = nn.Chain(nn.Dense(3, 16, jax.nn.relu), nn.BatchNorm(16), nn.Dense(16, 1))
        ps, st = luxc.setup(jax.random.key(0), model)
        x = jnp.linspace(-1, 1, 24).reshape(8, 3)
        return luxc.MSELoss(), (x, jnp.sum(x, axis=1, keepdims=True)), \\
            luxc.TrainState(model, ps, st, optax.adam(1e-2))
""")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("run_data")
    compile_factory(d, FACTORY)
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    np.savez(d / "train.npz", x, x.sum(1, keepdims=True))
    return d


def _factory_ts(work):
    namespace: dict = {}
    exec((work / "model_src.py").read_text(), namespace)
    return namespace["factory"]()[2]


def _arrays(path):
    return tensors_from_bytes(path.read_bytes(), str(path))[0]


def test_a_dataset_trains_epochs_of_full_shuffled_batches_and_logs_each_step(work, tmp_path):
    r = luxc_cli("run", work / "step.luxc", "--data", work / "train.npz", "--epochs", "3",
                 "--every", "1", "--log", tmp_path / "log.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ran 36 steps (1-36)" in r.stdout  # 3 epochs x (100 // 8) batches, 4 samples dropped
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 37))
    assert np.mean([row["loss"] for row in rows[-12:]]) < np.mean([row["loss"] for row in rows[:12]])


def test_a_run_killed_with_sigkill_and_resumed_ends_bit_identical(work, tmp_path):
    common = ["run", work / "step.luxc", "--data", work / "train.npz", "--epochs", "40", "-q"]
    r = luxc_cli(*common, "--save-state", "straight.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    args = [sys.executable, "-m", "luxc.cli", *map(str, common), "--checkpoint", "ck",
            "--checkpoint-every", "7", "--save-state", "resumed.safetensors", "--log", "log.jsonl"]
    child = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "ck").glob("step-*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "resumed.safetensors").exists()  # killed mid-run, not at the end
    r = subprocess.run([*args, "--resume"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(48, 481, 48))  # each row once (~10 lines of 480), killed or not
    straight, resumed = _arrays(tmp_path / "straight.safetensors"), \
        _arrays(tmp_path / "resumed.safetensors")
    assert len(straight) == len(resumed) == 22  # parameters, BatchNorm state, adam's mu, nu, count, the adjustable learning rate
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_luxc_run_writes_loads_in_python_and_back(work, tmp_path):
    r = luxc_cli("run", work / "step.luxc", "--steps", "3", "--save-state", "cli.safetensors",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ts = luxc.load_state(tmp_path / "cli.safetensors", like=_factory_ts(work))
    assert ts.step == 3 and ts.states["layer_2"]["training"] == luxc.Val(True)
    luxc.save_state(tmp_path / "py.safetensors", ts)
    r = luxc_cli("run", work / "step.luxc", "--state", "py.safetensors", "--steps", "5",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ran 5 steps (4-8)" in r.stdout


DISAGREEING = {  # the message -> the arrays written from x, float32 (100, 3)
    "data[0] holds float32[100, 2]; the step takes float32[N, 3]": lambda x: (x[:, :2], x[:, :1]),
    "data[0] holds int32[100, 3]; the step takes float32": lambda x: (x.astype(np.int32), x[:, :1]),
    "holds Python objects": lambda x: (x, np.array([None] * 100, dtype=object)),
    "holds 1 arrays; the step takes 2": lambda x: (x,),
}


@pytest.fixture(scope="module")
def disagreeing_runs(work, tmp_path_factory):
    """``luxc run`` on each disagreeing dataset, in a directory of its own, all in one process."""
    dirs = {message: tmp_path_factory.mktemp("disagrees") for message in DISAGREEING}
    x = np.zeros((100, 3), np.float32)
    for message, arrays in DISAGREEING.items():
        np.savez(dirs[message] / "bad.npz", *arrays(x))
    runs = luxc_cli_each([(d, ["run", work / "step.luxc", "--data", "bad.npz", "--checkpoint", "ck",
                               "--log", "log.jsonl", "--save-state", "s.safetensors"])
                          for d in dirs.values()])
    return {message: (d, r) for (message, d), r in zip(dirs.items(), runs)}


@pytest.mark.parametrize("message", DISAGREEING)
def test_a_dataset_that_disagrees_is_one_line_and_writes_nothing(disagreeing_runs, message):
    d, r = disagreeing_runs[message]
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert message in r.stderr.strip().splitlines()[-1], r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["bad.npz"]


def test_a_directory_of_npy_files_trains_memory_mapped(work, tmp_path):
    x = np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32)
    (tmp_path / "ds").mkdir()
    np.save(tmp_path / "ds" / "0.npy", x)
    np.save(tmp_path / "ds" / "1.npy", x.sum(1, keepdims=True))
    r = luxc_cli("run", work / "step.luxc", "--data", "ds", "--epochs", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ran 4 steps (1-4)" in r.stdout


def test_the_log_holds_every_stat_by_name_with_several_steps_per_call(tmp_path):
    import jax
    import jax.numpy as jnp
    import optax

    from luxc import nn

    def objective(model, ps, st, data):
        x, y = data
        pred, st = model(x, ps, st)
        return jnp.mean((pred - y) ** 2), st, {"label_sum": jnp.sum(y)}

    model = nn.Dense(3, 1)
    ps, st = luxc.setup(jax.random.key(0), model)
    x = np.random.default_rng(2).normal(size=(32, 3)).astype(np.float32)
    y = x[:, :1] * 2
    luxc.export_step(objective, (x[:8], y[:8]), luxc.TrainState(model, ps, st, optax.sgd(0.1)),
                     tmp_path / "s.luxc")
    np.savez(tmp_path / "d.npz", x, y)
    from click.testing import CliRunner

    from luxc.cli import main

    r = CliRunner().invoke(main, ["run", str(tmp_path / "s.luxc"), "--data", str(tmp_path / "d.npz"),
                                  "--steps", "8", "--every", "1", "--steps-per-call", "3",
                                  "--log", str(tmp_path / "log.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # The batches luxc documents: epoch e is default_rng([seed, e]).permutation(N), cut in 4.
    expected = []
    for epoch in range(2):
        order = np.random.default_rng([0, epoch]).permutation(32)
        expected += [float(np.sum(y[np.sort(order[i * 8:(i + 1) * 8])])) for i in range(4)]
    assert [row["step"] for row in rows] == list(range(1, 9))
    np.testing.assert_allclose([row["stats['label_sum']"] for row in rows], expected, rtol=1e-5)


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_writes_a_checkpoint_at_the_step_reached_and_exits_130(work, tmp_path, sig, code,
                                                                      said):
    # SIGTERM: `kill`, or a job scheduler stopping the job
    child = subprocess.Popen([sys.executable, "-m", "luxc.cli", "run", str(work / "step.luxc"),
                              "--data", str(work / "train.npz"), "--epochs", "5000", "-q",
                              "--checkpoint", "ck", "--checkpoint-every", "1000"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "ck").glob("step-*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(sig)
    out, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    step = int(err.split(f"{said} at step ")[1].split(";")[0])
    assert 1000 <= step < 60000
    ts = luxc.load_state(tmp_path / "ck" / f"step-{step:08d}.safetensors", like=_factory_ts(work))
    assert ts.step == step


def test_eval_data_prints_and_logs_the_objective_in_test_mode_on_every_sample(work, tmp_path):
    gx = np.random.default_rng(7).normal(size=(20, 3)).astype(np.float32)  # not the batch, 8
    gy = (gx[:, :1] - gx[:, 1:2]).astype(np.float32)
    np.savez(tmp_path / "eval.npz", gx, gy)
    r = luxc_cli("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "4",
                 "--eval-data", "eval.npz", "--eval-every", "2", "--log", "log.jsonl",
                 "--checkpoint", "ck", "--checkpoint-every", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    printed = [line for line in r.stdout.splitlines() if line.startswith("eval step")]
    rows = [row for row in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
            if row.get("eval")]
    assert [row["step"] for row in rows] == [2, 4] and len(printed) == 2
    like = _factory_ts(work)
    for row, line in zip(rows, printed):
        ts = luxc.load_state(tmp_path / "ck" / f"step-{row['step']:08d}.safetensors", like=like)
        # The objective in Python, eager, on the checkpoint's parameters: test mode (BatchNorm's
        # running statistics), every one of the 20 samples at once.
        want = float(luxc.MSELoss()(ts.model, ts.parameters, luxc.testmode(ts.states),
                                    (gx, gy))[0])
        assert abs(row["loss"] - want) <= 1e-5 * max(1.0, abs(want)), (row, want)
        assert line.startswith(f"eval step {row['step']}  loss {row['loss']:.6g}")
