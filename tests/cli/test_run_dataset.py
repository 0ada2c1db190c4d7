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
from click.testing import CliRunner

import luxc
from luxc.cli import main
from luxc.runtime.artifacts._tensor_codec import tensors_from_bytes
from tests.support import compile_then_run_each

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


DISAGREEING = {  # the message -> the arrays written from x, float32 (100, 3)
    "data[0] holds float32[100, 2]; the step takes float32[N, 3]": lambda x: (x[:, :2], x[:, :1]),
    "data[0] holds int32[100, 3]; the step takes float32": lambda x: (x.astype(np.int32), x[:, :1]),
    "holds Python objects": lambda x: (x, np.array([None] * 100, dtype=object)),
    "holds 1 arrays; the step takes 2": lambda x: (x,),
}


def _cases(mkdir, work):
    """Each case after ``luxc compile``: (its directory, its commands, run there in order)."""
    art, train = work / "step.luxc", work / "train.npz"
    d = mkdir("epochs")
    cases = {"epochs": (d, [["run", art, "--data", train, "--epochs", "3", "--every", "1",
                             "--log", d / "log.jsonl"]])}
    cases["straight"] = (mkdir("straight"), [["run", art, "--data", train, "--epochs", "40", "-q",
                                              "--save-state", "straight.safetensors"]])
    cases["checkpoint"] = (mkdir("checkpoint"), [["run", art, "--steps", "3", "--save-state",
                                                  "cli.safetensors"]])
    for message, arrays in DISAGREEING.items():
        d = mkdir("disagrees")
        np.savez(d / "bad.npz", *arrays(np.zeros((100, 3), np.float32)))
        cases[message] = (d, [["run", art, "--data", "bad.npz", "--checkpoint", "ck", "--log",
                               "log.jsonl", "--save-state", "s.safetensors"]])
    d = mkdir("npy-directory")
    x = np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32)
    (d / "ds").mkdir()
    np.save(d / "ds" / "0.npy", x)
    np.save(d / "ds" / "1.npy", x.sum(1, keepdims=True))
    cases["npy directory"] = (d, [["run", art, "--data", "ds", "--epochs", "2"]])
    d = mkdir("eval")
    gx = np.random.default_rng(7).normal(size=(20, 3)).astype(np.float32)  # not the batch, 8
    np.savez(d / "eval.npz", gx, (gx[:, :1] - gx[:, 1:2]).astype(np.float32))
    cases["eval"] = (d, [["run", art, "--data", train, "--steps", "4", "--eval-data",
                          "eval.npz", "--eval-every", "2", "--log", "log.jsonl", "--checkpoint",
                          "ck", "--checkpoint-every", "2"]])
    return cases


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``luxc compile`` of FACTORY, then every case of ``_cases``, in ONE fresh process (one
    jax start instead of one a command): (the directory of the artifact, its source and
    train.npz, case -> (its directory, its commands' results))."""
    work = tmp_path_factory.mktemp("run_data")
    (work / "model_src.py").write_text(FACTORY)
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    np.savez(work / "train.npz", x, x.sum(1, keepdims=True))
    cases = _cases(tmp_path_factory.mktemp, work)
    return work, compile_then_run_each(work, cases)


@pytest.fixture(scope="module")
def work(compiled):
    return compiled[0]


@pytest.fixture(scope="module")
def runs(compiled):
    return compiled[1]


def _factory_ts(work):
    namespace: dict = {}
    exec((work / "model_src.py").read_text(), namespace)
    return namespace["factory"]()[2]


def _arrays(path):
    return tensors_from_bytes(path.read_bytes(), str(path))[0]


def test_a_dataset_trains_epochs_of_full_shuffled_batches_and_logs_each_step(runs):
    d, (r,) = runs["epochs"]
    assert r.returncode == 0, r.stderr
    assert "ran 36 steps (1-36)" in r.stdout  # 3 epochs x (100 // 8) batches, 4 samples dropped
    rows = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 37))
    assert np.mean([row["loss"] for row in rows[-12:]]) < np.mean([row["loss"] for row in rows[:12]])


def test_a_run_killed_with_sigkill_and_resumed_ends_bit_identical(work, runs, tmp_path,
                                                                  monkeypatch):
    straight_dir, (r,) = runs["straight"]  # the same run, never killed
    assert r.returncode == 0, r.stderr
    common = ["run", work / "step.luxc", "--data", work / "train.npz", "--epochs", "40", "-q"]
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
    monkeypatch.chdir(tmp_path)  # the same command, relative paths and all, in this process
    r = CliRunner().invoke(main, [*args[3:], "--resume"])
    assert r.exit_code == 0, r.output
    assert "resumed from" in r.stdout
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(48, 481, 48))  # each row once (~10 lines of 480), killed or not
    straight, resumed = _arrays(straight_dir / "straight.safetensors"), \
        _arrays(tmp_path / "resumed.safetensors")
    assert len(straight) == len(resumed) == 22  # parameters, BatchNorm state, adam's mu, nu, count, the adjustable learning rate
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_luxc_run_writes_loads_in_python_and_back(work, runs, tmp_path):
    d, (r,) = runs["checkpoint"]
    assert r.returncode == 0, r.stderr
    ts = luxc.load_state(d / "cli.safetensors", like=_factory_ts(work))
    assert ts.step == 3 and ts.states["layer_2"]["training"] == luxc.Val(True)
    luxc.save_state(tmp_path / "py.safetensors", ts)
    r = CliRunner().invoke(main, ["run", str(work / "step.luxc"), "--state",
                                  str(tmp_path / "py.safetensors"), "--steps", "5"])
    assert r.exit_code == 0, r.output
    assert "ran 5 steps (4-8)" in r.stdout


@pytest.mark.parametrize("message", DISAGREEING)
def test_a_dataset_that_disagrees_is_one_line_and_writes_nothing(runs, message):
    d, (r,) = runs[message]
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert message in r.stderr.strip().splitlines()[-1], r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["bad.npz"]


def test_a_directory_of_npy_files_trains_memory_mapped(runs):
    _, (r,) = runs["npy directory"]
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


def test_eval_data_prints_and_logs_the_objective_in_test_mode_on_every_sample(work, runs):
    d, (r,) = runs["eval"]
    assert r.returncode == 0, r.stderr
    with np.load(d / "eval.npz") as held_out:  # 20 samples: not the batch, 8
        gx, gy = held_out["arr_0"], held_out["arr_1"]
    printed = [line for line in r.stdout.splitlines() if line.startswith("eval step")]
    rows = [row for row in map(json.loads, (d / "log.jsonl").read_text().splitlines())
            if row.get("eval")]
    assert [row["step"] for row in rows] == [2, 4] and len(printed) == 2
    like = _factory_ts(work)
    for row, line in zip(rows, printed):
        ts = luxc.load_state(d / "ck" / f"step-{row['step']:08d}.safetensors", like=like)
        # The objective in Python, eager, on the checkpoint's parameters: test mode (BatchNorm's
        # running statistics), every one of the 20 samples at once.
        want = float(luxc.MSELoss()(ts.model, ts.parameters, luxc.testmode(ts.states),
                                    (gx, gy))[0])
        assert abs(row["loss"] - want) <= 1e-5 * max(1.0, abs(want)), (row, want)
        assert line.startswith(f"eval step {row['step']}  loss {row['loss']:.6g}")
