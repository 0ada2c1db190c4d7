"""Issue 28, "attack your own fixes": a hostile author of an artifact, checkpoint, dataset or
log, and a careless user, against the round-3 fixes (docs/trust-datasets.md, docs/trust-data.md).
Each test is one case and asserts what a user should get: a one-line refusal naming the file,
the argument and the fix (status 1, no traceback), or the right result. Lux.jl has no command
line, files or checkpoints (its training API ends at `Training.single_train_step!`,
src/helpers/training.jl): these are luxc's own rules."""

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from click.testing import CliRunner

import luxc
from luxc import nn
from luxc.cli import main
from luxc.runtime.artifacts import ArraySpec
from luxc.runtime.data._dataset import Dataset
from luxc.runtime.files._errors import ArtifactError

FORGED = "acc\x1b]52;c;aGk=\x07\r\nsigned      by this user's luxc key"
SPECS = [ArraySpec((8, 3), "float32"), ArraySpec((8, 1), "float32")]
NAMES = ["data[0]", "data[1]"]


def _objective(model, ps, st, data):
    x, y = data
    pred, st = model(x, ps, st)
    return jnp.mean((pred - y) ** 2), st, {"label_sum": jnp.sum(y)}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An artifact whose objective has one stat (``label_sum``); train.npz holds 32 samples
    for it and x.npy 32 inputs."""
    d = tmp_path_factory.mktemp("adversary")
    x = np.linspace(-1, 1, 96, dtype=np.float32).reshape(32, 3)
    np.savez(d / "train.npz", x, x.sum(1, keepdims=True))
    np.save(d / "x.npy", x)
    model = nn.Dense(3, 1)
    state = luxc.TrainState(model, *luxc.setup(jax.random.key(0), model), optax.adam(1e-2))
    luxc.export_step(_objective, (x[:8], x[:8].sum(1, keepdims=True)), state, d / "step.luxc")
    return d


def _run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def _one_line_error(r, *words):
    """A refusal: status 1, one line, no traceback."""
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for word in words:
        assert word in lines[0], r.output


def _luxc(*args, cwd, timeout=240, limit_bytes=None):
    """The console command in a child (a hang is a failure after ``timeout``, not a stuck
    suite); ``limit_bytes``: RLIMIT_FSIZE, a disk that is full after that many bytes a file
    (set in the child itself: no fork of this multithreaded process)."""
    limit = "" if limit_bytes is None else \
        f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes},) * 2); "
    code = f"{limit}import runpy, sys; sys.argv[0] = 'luxc'; runpy.run_module('luxc.cli', " \
        "run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _unsigned_copy(work, tmp_path, edit):
    """A stranger's copy of the artifact: its manifest edited, the signature dropped."""
    art = tmp_path / "art"
    shutil.copytree(work / "step.luxc", art)
    (art / "manifest.sig").unlink(missing_ok=True)
    manifest = json.loads((art / "manifest.json").read_text())
    edit(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


# ---------------------------------------------------------------- FIFOs for every path argument


@pytest.mark.slow
def test_predict_out_that_is_a_fifo_is_refused_at_once(work, tmp_path):
    os.mkfifo(tmp_path / "o.npy")
    r = _luxc("predict", work / "step.luxc", "--input", work / "x.npy", "--out", "o.npy",
              cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--out o.npy" in r.stderr and "FIFO" in r.stderr, r.stderr


@pytest.mark.parametrize("option", ["--save-state", "--plot", "--state", "--log"])
def test_a_fifo_given_to_a_run_option_is_one_line_and_left_alone(work, tmp_path, option):
    fifo = tmp_path / ("f.png" if option == "--plot" else "f.safetensors")
    os.mkfifo(fifo)
    r = _run("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "1",
             option, fifo)
    _one_line_error(r, str(fifo))
    assert fifo.is_fifo()


def test_a_checkpoint_lock_file_that_is_a_symlink_or_fifo_is_one_line_and_kept(work, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    for kind in ("symlink", "fifo"):
        ck = tmp_path / f"ck-{kind}"
        ck.mkdir()
        lock = ck / ".luxc-run.lock"
        lock.symlink_to(victim) if kind == "symlink" else os.mkfifo(lock)
        r = _run("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "2",
                 "--checkpoint", ck)
        _one_line_error(r, "--checkpoint", ".luxc-run.lock", "remove")
        assert os.path.lexists(lock) and victim.read_text() == "mine"


# ---------------------------------------------------------------- manifest text: stat names


@pytest.mark.parametrize("names, refused", [
    ([FORGED], False), (["step"], True), (["loss"], True), (5, True), (["a", "b"], True)])
def test_a_strangers_stat_names_never_drive_the_terminal_or_overwrite_the_log(
        work, tmp_path, names, refused):
    art = _unsigned_copy(work, tmp_path, lambda m: m["layout"].__setitem__("stat_names", names))
    r = _run("run", art, "--data", work / "train.npz", "--eval-data", work / "train.npz",
             "--steps", "2", "--every", "1", "--log", tmp_path / "log.jsonl")
    if refused:
        _one_line_error(r, "stat_names")
        assert not (tmp_path / "log.jsonl").exists()
        return
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\r" not in r.output
    assert not any(line.startswith("signed") for line in r.output.splitlines()), r.output
    assert "\\x1b]52" in r.output  # shown escaped
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if not row.get("eval")] == [1, 2]
    assert all(set(row) >= {"step", "loss", FORGED} for row in rows)


# ---------------------------------------------------------------- lying .npy / .npz files


def _xy(n=16):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return x, x.sum(1, keepdims=True)


def test_npz_members_named_dot_dot_or_twice_are_read_in_place_and_nothing_is_written(tmp_path):
    x, y = _xy()
    path = tmp_path / "sub" / "d.npz"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        for name, a in (("../x.npy", x), ("../x.npy", y)):
            with z.open(name, "w") as f:
                np.lib.format.write_array(f, a)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    batches = Dataset(path, SPECS, NAMES).batch(0)
    order = np.sort(np.random.default_rng([0, 0]).permutation(16)[:8])
    np.testing.assert_array_equal(batches[0], x[order])
    np.testing.assert_array_equal(batches[1], y[order])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_local_header_that_disagrees_with_the_central_directory_is_one_line(tmp_path):
    x, y = _xy()
    path = tmp_path / "d.npz"
    np.savez(path, x, y)
    data = bytearray(path.read_bytes())
    at = data.index(b"arr_0.npy")  # the first local header's name, not the directory's
    data[at:at + 9] = b"arr_9.npy"
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"data\[0\] .*d\.npz:arr_0.*differ") as e:
        Dataset(path, SPECS, NAMES)
    assert "\n" not in str(e.value)


def _npy_with_header(path, header: dict, data: bytes = b"") -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)


@pytest.mark.parametrize("shape", [(-8, 3), (8, -3), (2 ** 62, 3), (2 ** 70, 3)])
def test_a_predict_input_declaring_a_negative_or_huge_shape_is_one_line(work, tmp_path, shape):
    _npy_with_header(tmp_path / "x.npy", {"descr": "<f4", "fortran_order": False,
                                          "shape": shape}, b"\0" * 96)
    r = _run("predict", work / "step.luxc", "--input", tmp_path / "x.npy",
             "--out", tmp_path / "o.npy")
    _one_line_error(r, "--input")
    assert not (tmp_path / "o.npy").exists()


def test_a_sparse_16_gib_data_directory_is_refused_for_its_shuffle_before_any_read(tmp_path):
    """2^30 samples of (sparse) zeros: the shuffle alone would take 8 GiB."""
    rows = 1 << 30
    d = tmp_path / "d"
    d.mkdir()
    _npy_with_header(d / "0.npy", {"descr": "<f4", "fortran_order": False, "shape": (rows, 3)})
    os.truncate(d / "0.npy", (d / "0.npy").stat().st_size + rows * 12)
    _npy_with_header(d / "1.npy", {"descr": "<f4", "fortran_order": False, "shape": (rows, 1)})
    os.truncate(d / "1.npy", (d / "1.npy").stat().st_size + rows * 4)
    with pytest.raises(ArtifactError, match="the epoch's permutation.*max_memory="):
        Dataset(d, SPECS, NAMES)


# ---------------------------------------------------------------- checkpoints


def test_resume_when_the_newest_checkpoint_became_a_directory_is_one_line(work, tmp_path):
    ck = tmp_path / "ck"
    r = _run("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "4",
             "--checkpoint", ck, "--checkpoint-every", "2", "-q")
    assert r.exit_code == 0, r.output
    (ck / "step-00000004.safetensors").unlink()
    (ck / "step-00000004.safetensors").mkdir()
    r = _run("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "6",
             "--checkpoint", ck, "--resume", "-q")
    _one_line_error(r, "step-00000004.safetensors", "move it out", "step-00000002.safetensors")
    assert (ck / "step-00000004.safetensors").is_dir()


def test_a_huge_keep_keeps_every_checkpoint(work, tmp_path):
    ck = tmp_path / "ck"
    r = _run("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "3",
             "--checkpoint", ck, "--checkpoint-every", "1", "--keep", str(10 ** 30), "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in ck.glob("step-*")) == [
        f"step-0000000{i}.safetensors" for i in (1, 2, 3)]


def test_keep_zero_is_refused_by_its_range(work, tmp_path):
    r = _run("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "1",
             "--checkpoint", tmp_path / "ck", "--keep", "0")
    assert r.exit_code == 2 and "--keep" in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------- a full disk, for real


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--save-state", "--log"])
def test_a_file_size_limit_is_one_line_naming_the_file(work, tmp_path, option):
    """RLIMIT_FSIZE in the child: every write past 600 bytes fails (EFBIG), as on a full disk."""
    target = tmp_path / ("s.safetensors" if option == "--save-state" else "log.jsonl")
    r = _luxc("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "40",
              "--every", "1", option, target, cwd=tmp_path, limit_bytes=600)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(target) in r.stderr, r.stderr
    if option == "--log":
        rows = target.read_text().splitlines()
        assert rows and all(json.loads(row)["step"] for row in rows)  # whole rows only
    else:
        assert not target.exists()


# ---------------------------------------------------------------- one file for two outputs


@pytest.mark.parametrize("first, second", [("--log", "--save-state"), ("--log", "--plot"),
                                           ("--save-state", "--plot")])
def test_two_outputs_given_the_same_file_are_refused_before_any_step(work, tmp_path, first,
                                                                      second):
    """`--log F --save-state F` trained, then replaced the run's log with its state."""
    out = tmp_path / "out.png"
    r = _run("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "2",
             first, out, second, out)
    _one_line_error(r, second, first, "its own file")
    assert not out.exists()


@pytest.mark.parametrize("option, name", [("--log", "step-00000002.safetensors"),
                                          ("--save-state", "step-00000004.safetensors"),
                                          ("--log", ".luxc-run.lock")])
def test_an_output_named_like_a_checkpoint_in_the_checkpoint_directory_is_refused_first(
        work, tmp_path, option, name):
    """`--log ck/step-00000002.safetensors --checkpoint ck` trained, then could not save."""
    ck = tmp_path / "ck"
    ck.mkdir()
    r = _run("run", work / "step.luxc", "--data", work / "train.npz", "--steps", "4",
             "--checkpoint", ck, "--checkpoint-every", "2", option, ck / name)
    _one_line_error(r, option, "--checkpoint", "another name")
    assert list(ck.iterdir()) == []


@pytest.mark.parametrize("where", ["inside", "through a link"])
def test_profile_trace_inside_the_artifact_is_refused_and_the_artifact_unchanged(work, tmp_path,
                                                                                  where):
    art = work / "step.luxc"
    before = sorted(p.name for p in art.rglob("*"))
    if where == "inside":
        trace = art / "trace"
    else:
        (tmp_path / "link").symlink_to(art)
        trace = tmp_path / "link" / "trace"
    r = _run("profile", art, "--steps", "1", "--trace", trace)
    _one_line_error(r, "--trace", "inside the artifact")
    assert sorted(p.name for p in art.rglob("*")) == before


def test_resume_after_the_newest_checkpoint_was_deleted_keeps_log_and_checkpoints_agreeing(
        work, tmp_path):
    run = ["run", work / "step.luxc", "--data", work / "train.npz", "-q", "--every", "1",
           "--checkpoint", tmp_path / "ck", "--checkpoint-every", "2", "--log", tmp_path / "l"]
    assert _run(*run, "--steps", "6").exit_code == 0
    (tmp_path / "ck" / "step-00000006.safetensors").unlink()
    r = _run(*run, "--steps", "8", "--resume")
    assert r.exit_code == 0 and "resumed from" in r.output and "(step 4)" in r.output, r.output
    steps = [json.loads(line)["step"] for line in (tmp_path / "l").read_text().splitlines()]
    assert steps == list(range(1, 9))  # steps 5 and 6 written again, once each


def test_a_stored_zip64_member_is_read_at_its_true_offset(tmp_path):
    x, y = _xy()
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as z:
        for name, a in (("x.npy", x), ("y.npy", y)):
            with z.open(name, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a)
    data = Dataset(path, SPECS, NAMES, seed=3)
    order = np.sort(np.random.default_rng([3, 1]).permutation(16)[8:])
    batch = data.batch(3)  # epoch 1, its second batch
    np.testing.assert_array_equal(batch[0], x[order])
    np.testing.assert_array_equal(batch[1], y[order])


# ---------------------------------------------------------------- forged checkpoints


def test_a_forged_artifact_dir_in_a_checkpoint_is_shown_escaped(work, tmp_path):
    from tests.trust.test_user_data_kept import _forge

    ck = tmp_path / "ck"
    run = ["run", work / "step.luxc", "--data", work / "train.npz", "-q", "--steps", "2",
           "--checkpoint", ck]
    assert _run(*run).exit_code == 0

    def edit(contents, arrays):
        contents["run"].update(artifact="f" * 64, artifact_dir=FORGED)

    _forge(ck / "step-00000002.safetensors", edit)
    r = _run(*run[:-3], "4", "--checkpoint", ck, "--resume")
    _one_line_error(r, "--resume", "\\x1b]52")
    assert "\x1b" not in r.output and "\x07" not in r.output and "\r" not in r.output


@pytest.mark.parametrize("length", [2 ** 32 - 1, 100_000])
def test_a_npy_header_declaring_a_huge_header_is_one_line(tmp_path, length):
    d = tmp_path / "d"
    d.mkdir()
    x, y = _xy()
    np.save(d / "1.npy", y)
    (d / "0.npy").write_bytes(b"\x93NUMPY\x02\x00" + length.to_bytes(4, "little") + b"{" * 64)
    with pytest.raises(ArtifactError, match=r"data\[0\] .*0\.npy.* is not a readable \.npy"):
        Dataset(d, SPECS, NAMES)


# ---------------------------------------------------------------- values the cast would change

INT_SPECS = [SPECS[0], ArraySpec((8, 1), "int32")]


@pytest.mark.parametrize("evaluation", [False, True])
def test_int64_labels_out_of_the_steps_int32_range_are_refused_not_wrapped(tmp_path, evaluation):
    """np.asarray(2**32 + 5, int32) is 5: a label silently became another."""
    x, _ = _xy(8)
    labels = np.arange(8, dtype=np.int64).reshape(8, 1)
    np.savez(tmp_path / "ok.npz", x, labels)
    got = Dataset(tmp_path / "ok.npz", INT_SPECS, NAMES, evaluation=evaluation)
    batch = got.arrays() if evaluation else got.batch(0)
    assert batch[1].dtype == np.int32 and batch[1].tolist() == labels.tolist()
    labels[3] = 2 ** 32 + 5
    np.savez(tmp_path / "d.npz", x, labels)
    data = Dataset(tmp_path / "d.npz", INT_SPECS, NAMES, evaluation=evaluation)
    with pytest.raises(ArtifactError, match=r"data\[1\] .*d\.npz.* holds 4294967301, out of "
                                            r"the step's int32 range"):
        data.arrays() if evaluation else data.batch(0)


def test_float64_values_that_overflow_float32_are_refused_but_inf_kept(tmp_path):
    x, y = _xy(8)
    x64 = x.astype(np.float64)
    x64[0, 0] = np.inf  # an inf in the data stays an inf (it is the data's own)
    np.savez(tmp_path / "inf.npz", x64, y)
    assert np.isinf(Dataset(tmp_path / "inf.npz", SPECS, NAMES).batch(0)[0][0, 0])
    x64[1, 1] = 1e300
    np.savez(tmp_path / "big.npz", x64, y)
    with pytest.raises(ArtifactError, match=r"data\[0\] .* beyond float32's range"):
        Dataset(tmp_path / "big.npz", SPECS, NAMES).batch(0)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """An artifact whose model takes int32 tokens (an Embedding)."""
    d = tmp_path_factory.mktemp("tokens")
    model = nn.Chain(nn.Embedding(10, 2), nn.Dense(2, 1))
    state = luxc.TrainState(model, *luxc.setup(jax.random.key(0), model), optax.sgd(0.1))
    ids = jnp.arange(8, dtype=jnp.int32)
    luxc.export_step(luxc.MSELoss(), (ids, jnp.zeros((8, 1))), state, d / "step.luxc")
    return d / "step.luxc"


def test_predict_refuses_int64_tokens_out_of_int32_range_naming_the_input(tokens, tmp_path):
    ids = np.arange(8, dtype=np.int64)
    np.save(tmp_path / "ok.npy", ids)
    r = _run("predict", tokens, "--input", tmp_path / "ok.npy", "--out", tmp_path / "ok-out.npy")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.load(tmp_path / "ok-out.npy"),
                               luxc.load(tokens).predict(ids.astype(np.int32)), rtol=1e-6)
    ids[5] = 2 ** 32 + 5  # as int32: 5, another token
    np.save(tmp_path / "x.npy", ids)
    r = _run("predict", tokens, "--input", tmp_path / "x.npy", "--out", tmp_path / "o.npy")
    _one_line_error(r, "--input", "4294967301", "int32 range")
    assert not (tmp_path / "o.npy").exists()
    with pytest.raises(ArtifactError, match="x holds 4294967301"):
        luxc.load(tokens).predict(ids)


# ---------------------------------------------------------------- Ctrl-C at a chosen moment


@pytest.mark.slow
def test_ctrl_c_after_a_logged_step_leaves_log_and_checkpoint_agreeing(work, tmp_path,
                                                                       monkeypatch):
    """SIGINT once the child has printed step 3 (its readiness line); the checkpoint it then
    writes records the log as it is, so --resume appends, every step logged once."""
    args = [sys.executable, "-m", "luxc.cli", "run", work / "step.luxc", "--data",
            work / "train.npz", "--every", "1", "--log", "l", "--checkpoint", "ck"]
    child = subprocess.Popen([*map(str, args), "--epochs", "100000", "--checkpoint-every",
                              "100000"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    for line in child.stdout:  # ready: the step loop runs and the handler is installed
        if line.startswith("step 3 "):
            break
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130 and "Traceback" not in err, err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert (tmp_path / "ck" / f"step-{step:08d}.safetensors").is_file()
    logged = [json.loads(row)["step"] for row in (tmp_path / "l").read_text().splitlines()]
    assert logged == list(range(1, step + 1))
    monkeypatch.chdir(tmp_path)  # the same command, relative paths and all, in this process
    r = _run(*args[3:], "--resume", "-q", "--steps", step + 2)
    assert r.exit_code == 0, r.output
    logged = [json.loads(row)["step"] for row in (tmp_path / "l").read_text().splitlines()]
    assert logged == list(range(1, step + 3))


@pytest.mark.parametrize("when", ["load", "compile"])
def test_ctrl_c_while_the_artifact_loads_or_compiles_stops_before_the_first_step(
        work, tmp_path, monkeypatch, when):
    """A Ctrl-C at ~1 s (jax starting) was swallowed by jax's gc callback ("Exception ignored
    ... KeyboardInterrupt") and the run trained to its end with status 0."""
    from luxc.cli import run_cmd
    from luxc.runtime.artifacts._loaded_step import LoadedStep

    def interrupted(original):
        sent = []

        def call(*args, **kwargs):
            if not sent:  # one Ctrl-C (a second one stops at once)
                sent.append(os.kill(os.getpid(), signal.SIGINT))
            return original(*args, **kwargs)
        return call

    if when == "load":
        monkeypatch.setattr(run_cmd, "load_artifact", interrupted(run_cmd.load_artifact))
    else:
        monkeypatch.setattr(LoadedStep, "prepare", interrupted(LoadedStep.prepare))
    before = signal.getsignal(signal.SIGINT)
    r = CliRunner().invoke(main, ["run", str(work / "step.luxc"), "--data",
                                  str(work / "train.npz"), "--steps", "50", "--checkpoint",
                                  str(tmp_path / "ck"), "--log", str(tmp_path / "l")])
    assert r.exit_code == 130, r.output
    assert "interrupted before the first step; nothing was written" in r.output
    assert "ran " not in r.output and "Traceback" not in r.output
    assert not (tmp_path / "l").exists() and not list(tmp_path.glob("ck/step-*"))
    assert signal.getsignal(signal.SIGINT) is before  # the test process's handler is back


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="a Ctrl-C while Python imports luxc and jax (the first "
                   "~1-3 s of every command) is Python's default KeyboardInterrupt: a traceback "
                   "from inside an import and status -2 (or -2 and no word when it lands before "
                   "the interpreter starts). Fixing it needs a handler installed before "
                   "`import luxc` runs jax's import: a console entry point outside the luxc "
                   "package (pyproject [project.scripts]) or a lazy luxc/__init__.py.")
def test_ctrl_c_while_luxc_starts_is_one_line_and_status_130(work, tmp_path):
    child = subprocess.Popen([sys.executable, "-m", "luxc.cli", "run", str(work / "step.luxc"),
                              "--steps", "5"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.send_signal(signal.SIGINT)  # at once: the child is still importing
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130 and len(err.strip().splitlines()) == 1, (child.returncode,
                                                                              err)


# ---------------------------------------------------------------- two runs, one directory


@pytest.mark.slow
@pytest.mark.parametrize("shared", ["--checkpoint", "--log"])
def test_two_runs_started_together_on_one_output_one_is_refused_in_one_line(work, tmp_path,
                                                                            shared):
    def start(i):
        own = ["--log", f"l{i}", "--checkpoint", "ck"] if shared == "--checkpoint" else \
            ["--log", "l", "--checkpoint", f"ck{i}"]
        args = ["run", work / "step.luxc", "--data", work / "train.npz", "--steps", "300",
                "--checkpoint-every", "50", "-q", *own]
        return subprocess.Popen([sys.executable, "-m", "luxc.cli", *map(str, args)],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    children = [start(0), start(1)]
    results = [(c.wait(timeout=300), c.stderr.read()) for c in children]
    assert sorted(rc for rc, _ in results) == [0, 1], results
    err = next(e for rc, e in results if rc == 1)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert shared in err, err
    if shared == "--log":
        steps = [json.loads(row)["step"] for row in (tmp_path / "l").read_text().splitlines()]
        assert steps == list(range(30, 301, 30))  # the winner's rows, each once


@pytest.mark.parametrize("command", ["predict", "run"])
def test_an_output_that_is_a_symlink_loop_is_one_line_naming_it(work, tmp_path, command):
    loop = tmp_path / "loop.npy"
    loop.symlink_to(loop)
    args = ["predict", work / "step.luxc", "--input", work / "x.npy", "--out", loop] \
        if command == "predict" else ["run", work / "step.luxc", "--steps", "1", "--log", loop]
    r = _run(*args)
    _one_line_error(r, str(loop))
    assert "RuntimeError" not in r.output and loop.is_symlink()
