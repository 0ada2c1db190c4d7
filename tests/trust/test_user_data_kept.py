"""Issue 28, part B: `luxc run`, its checkpoints and log, and `luxc predict` never lose a
user's data. Each test is a case of the adversarial run (a careless user, another run, a forged
checkpoint, a full disk). Lux.jl has no command line or checkpoint files (its training API ends
at `Training.single_train_step!`, src/helpers/training.jl): these behaviours are luxc's own,
documented in docs/trust-data.md."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from click.testing import CliRunner

import luxc
from luxc import nn
from luxc.cli import main
from luxc.runtime.artifacts._checkpoint_format import digest
from luxc.runtime.artifacts._tensor_codec import tensor_bytes, tensors_from_bytes
from luxc.runtime.files._errors import ArtifactError
from luxc.training._mixed_precision import initial_loss_scaling


def _export(out, *, lr=0.1, options=None):
    model = nn.Chain(nn.Dense(3, 4, jax.nn.relu), nn.Dense(4, 1))
    ps, st = luxc.setup(jax.random.key(0), model)
    x = jnp.linspace(-1, 1, 24).reshape(8, 3)
    luxc.export_step(luxc.MSELoss(), (x, x.sum(1, keepdims=True)),
                     luxc.TrainState(model, ps, st, optax.sgd(lr)), out, compile_options=options)
    return out


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("trust_data") / "step.luxc")


def _run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def _one_line_error(r, *words):
    """A refusal: status 1, one line on the output, no traceback, no step run."""
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output and "ran " not in r.output, r.output
    for word in words:
        assert word in lines[0], r.output


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _tree(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def _forge(path, edit):
    """Rewrite the checkpoint at ``path`` with ``edit(contents, arrays)`` applied and its
    SHA-256 recomputed: what anyone can do (the checksum is integrity, not authenticity)."""
    arrays, meta = tensors_from_bytes(path.read_bytes(), str(path))
    contents = json.loads(meta["contents"])
    edit(contents, arrays)
    meta["contents"] = json.dumps(contents, sort_keys=True)
    meta["sha256"] = digest(meta["contents"].encode(), arrays)
    path.write_bytes(tensor_bytes(arrays, meta))


# --checkpoint DIR: nothing that is not this run's checkpoint is written over or removed


@pytest.mark.parametrize("content", [b"my notes", tensor_bytes([np.ones(3)], {"format": "pt"})])
def test_a_file_named_like_a_checkpoint_is_never_written_over(art, tmp_path, content):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "step-00000010.safetensors").write_bytes(content)
    r = _run(art, "--steps", "10", "--checkpoint", ck)
    _one_line_error(r, "step-00000010.safetensors", "not a luxc checkpoint", "move it out")
    assert (ck / "step-00000010.safetensors").read_bytes() == content


def test_a_fresh_run_refuses_a_directory_holding_another_runs_checkpoints(art, tmp_path):
    ck = tmp_path / "ck"
    assert _run(art, "--steps", "6", "--checkpoint-every", "2", "--checkpoint", ck).exit_code == 0
    before = _files(ck)
    r = _run(art, "--steps", "6", "--checkpoint-every", "2", "--checkpoint", ck)
    _one_line_error(r, "another run", "--resume", "--new-run")
    assert _files(ck) == before


def test_keep_counts_only_this_runs_checkpoints_and_resume_continues_this_run(art, tmp_path):
    ck = tmp_path / "ck"
    assert _run(art, "--steps", "60", "--checkpoint-every", "10", "--checkpoint", ck).exit_code == 0
    theirs = _files(ck)
    assert [n for n in theirs if n.startswith("step-")] == [
        f"step-000000{s}.safetensors" for s in (40, 50, 60)]
    r = _run(art, "--steps", "3", "--checkpoint-every", "1", "--keep", "2", "--new-run",
             "--checkpoint", ck)
    assert r.exit_code == 0, r.output
    now = _files(ck)
    assert {n: now[n] for n in theirs} == theirs  # the other run's files, byte for byte
    assert sorted(set(now) - set(theirs)) == ["step-00000002.safetensors",
                                              "step-00000003.safetensors"]
    r = _run(art, "--steps", "5", "--checkpoint-every", "1", "--keep", "2", "--resume",
             "--checkpoint", ck)
    assert r.exit_code == 0, r.output
    assert "resumed from" in r.output and "step-00000003.safetensors (step 3)" in r.output
    assert "ran 2 steps (4-5)" in r.output
    assert {n: _files(ck)[n] for n in theirs} == theirs


def test_a_new_run_that_would_write_over_another_runs_checkpoint_is_refused(art, tmp_path):
    ck = tmp_path / "ck"
    assert _run(art, "--steps", "6", "--checkpoint-every", "2", "--checkpoint", ck).exit_code == 0
    before = _files(ck)
    r = _run(art, "--steps", "5", "--new-run", "--checkpoint", ck)
    _one_line_error(r, "step-00000002.safetensors", "would write over")
    assert _files(ck) == before


def test_resume_refuses_the_checkpoints_of_another_artifact(art, tmp_path):
    other = _export(tmp_path / "other.luxc", lr=0.05)  # same shapes, another step
    ck = tmp_path / "ck"
    assert _run(art, "--steps", "4", "--checkpoint", ck).exit_code == 0
    before = _files(ck)
    r = _run(other, "--steps", "8", "--resume", "--checkpoint", ck)
    _one_line_error(r, "--resume", str(art.absolute()), str(other))
    assert _files(ck) == before


def test_a_dangling_symlink_as_checkpoint_directory_is_refused_before_training(art, tmp_path):
    (tmp_path / "ck").symlink_to(tmp_path / "gone")
    r = _run(art, "--steps", "2", "--checkpoint", tmp_path / "ck")
    _one_line_error(r, "symbolic link", "does not exist")
    assert not (tmp_path / "gone").exists()


def test_a_checkpoint_directory_locked_by_another_run_is_refused(art, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    with open(ck / ".luxc-run.lock", "w") as held:  # what a running `luxc run` holds
        fcntl.flock(held, fcntl.LOCK_EX)
        r = _run(art, "--steps", "2", "--checkpoint", ck)
    _one_line_error(r, f"--checkpoint {ck} is in use by another luxc run")
    assert _run(art, "--steps", "2", "--checkpoint", ck).exit_code == 0  # released: it runs


# Truncated and forged checkpoints


@pytest.mark.parametrize("cut", [5, -4])  # in the header / in the last tensor
def test_a_truncated_newest_checkpoint_is_named_never_silently_replaced(art, tmp_path, cut):
    ck = tmp_path / "ck"
    assert _run(art, "--steps", "4", "--checkpoint-every", "2", "--checkpoint", ck).exit_code == 0
    newest = ck / "step-00000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:cut])
    damaged = newest.read_bytes()
    r = _run(art, "--steps", "6", "--checkpoint-every", "2", "--resume", "--checkpoint", ck)
    _one_line_error(r, "step-00000004.safetensors", "move", "step-00000002.safetensors")
    assert newest.read_bytes() == damaged
    newest.rename(tmp_path / "damaged.safetensors")
    r = _run(art, "--steps", "6", "--checkpoint-every", "2", "--resume", "--checkpoint", ck)
    assert r.exit_code == 0 and "step-00000002.safetensors (step 2)" in r.output, r.output


@pytest.mark.parametrize("step", [10**300, -1, 1 << 41])
def test_a_forged_absurd_step_is_one_line_before_training(art, tmp_path, step):
    state = tmp_path / "s.safetensors"
    assert _run(art, "--steps", "2", "--save-state", state).exit_code == 0
    _forge(state, lambda contents, arrays: contents.update(step=step))
    r = _run(art, "--steps", "2", "--state", state)
    _one_line_error(r, f"checkpoint {state} has step", "a whole number from 0 to 2**40")
    assert "File name too long" not in r.output and len(r.output) < 300


def _train_state(model):
    ps, st = luxc.setup(jax.random.key(0), model)
    return luxc.TrainState(model, ps, st, optax.adam(1e-3))


def test_load_state_refuses_a_flipped_training_flag_or_a_string_for_a_bool(tmp_path):
    ts = _train_state(nn.Chain(nn.Dense(2, 3), nn.BatchNorm(3)))
    path = tmp_path / "ck.safetensors"
    flag = "states['layer_2']['training']"
    for forged, words in [({"type": "bool", "value": False}, ["Val(False)", "luxc.testmode"]),
                          ({"type": "str", "value": "True"}, ["a str", "a bool"])]:
        luxc.save_state(path, ts)
        assert luxc.load_state(path, like=ts).states["layer_2"]["training"].value is True
        _forge(path, lambda contents, arrays, forged=forged: contents["statics"].update(
            {flag: forged}))
        with pytest.raises(ArtifactError, match=r"training\'\]") as e:
            luxc.load_state(path, like=ts)
        assert all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("scale", [0.0, np.inf, np.nan, -1.0])
def test_a_forged_float16_loss_scale_that_cannot_train_is_refused(tmp_path, scale):
    ts = _train_state(nn.Dense(2, 3)).replace(loss_scaling=initial_loss_scaling())
    path = tmp_path / "ck.safetensors"
    luxc.save_state(path, ts)
    assert float(luxc.load_state(path, like=ts).loss_scale) == 2.0**15

    def edit(contents, arrays):
        i = [leaf["path"] for leaf in contents["leaves"]].index("loss_scaling.scale")
        arrays[i] = np.float32(scale).reshape(arrays[i].shape)

    _forge(path, edit)
    with pytest.raises(ArtifactError, match="loss scale is .*a finite number > 0"):
        luxc.load_state(path, like=ts)


def test_a_float16_run_whose_loss_scale_collapses_stops_with_one_line(tmp_path):
    art16 = _export(tmp_path / "f16.luxc", options=luxc.CompileOptions(mixed_precision="f16"))
    x = np.full((8, 3), np.nan, np.float32)  # every gradient nan: every step skipped
    np.savez(tmp_path / "nan.npz", x, x[:, :1])
    r = _run(art16, "--steps", "100000", "--data", tmp_path / "nan.npz", "-q", "--log",
             tmp_path / "log.jsonl")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "float16 loss scale is 0 at step" in r.output and "training stopped" in r.output
    stopped = int(r.output.split("at step ")[1].split(":")[0])
    # 2**15 halved each step: below float32's smallest normal 2**-126 after 15 + 126 + 1
    # halvings, flushed to 0 by XLA:CPU; 15 + 149 + 1 where subnormals are kept
    assert stopped in (142, 165)


# --seed with --state: honoured


def test_seed_with_state_is_the_new_runs_data_order(art, tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x, x.sum(1, keepdims=True))
    start = tmp_path / "start.safetensors"
    luxc.load(art).save_state(start)  # the artifact's state, step 0, with a run's record
    _forge(start, lambda contents, arrays: contents.update(run={"seed": 0, "origin": 0}))

    def final(name, *args):
        r = _run(art, "--data", tmp_path / "d.npz", "--steps", "6", "--save-state",
                 tmp_path / name, *args)
        assert r.exit_code == 0, r.output
        return tensors_from_bytes((tmp_path / name).read_bytes(), name)[0]

    plain = final("a.safetensors", "--seed", "3")
    from_state = final("b.safetensors", "--seed", "3", "--state", tmp_path / "start.safetensors")
    other = final("c.safetensors", "--seed", "4", "--state", tmp_path / "start.safetensors")
    for a, b in zip(plain, from_state):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(plain, other))


# --log: only ever this run's file


def test_a_log_that_is_not_a_regular_file_is_refused_and_left_alone(art, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "real.jsonl").write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "real.jsonl")
    (tmp_path / "dir").mkdir()
    cases = {"/dev/null": "a character device", tmp_path / "fifo": "a FIFO",
             tmp_path / "link.jsonl": "a symbolic link", tmp_path / "dir": "a directory"}
    for path, kind in cases.items():
        for resume in ([], ["--resume"]):
            r = _run(art, "--steps", "2", "--log", path, "--checkpoint", tmp_path / "ck", *resume)
            assert r.exit_code != 0 and "ran " not in r.output, r.output
            assert kind in r.output, r.output
    assert os.path.islink(tmp_path / "link.jsonl") and (tmp_path / "real.jsonl").read_text() == "{}\n"
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert not any((tmp_path / "dir").iterdir())


def test_resume_appends_only_to_the_log_its_run_wrote(art, tmp_path):
    ck, log = tmp_path / "ck", tmp_path / "log.jsonl"
    (tmp_path / "config.json").write_text('{"lr": 0.1}\n')
    np.savez(tmp_path / "train.npz", np.ones(3))
    assert _run(art, "--steps", "4", "--checkpoint", ck, "--log", log).exit_code == 0
    for name in ("config.json", "train.npz"):
        before = (tmp_path / name).read_bytes()
        r = _run(art, "--steps", "8", "--resume", "--checkpoint", ck, "--log", tmp_path / name)
        _one_line_error(r, f"--log {tmp_path / name}", "not the log of the run being resumed")
        assert "UnicodeDecodeError" not in r.output and (tmp_path / name).read_bytes() == before
    r = _run(art, "--steps", "4", "--checkpoint", tmp_path / "ck2", "--log", log)
    _one_line_error(r, "already exists")
    r = _run(art, "--steps", "8", "--resume", "--checkpoint", ck, "--log", log)
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 9))


def test_a_checkpoint_taken_before_the_first_log_row_names_its_log_by_file(art, tmp_path):
    ck, log, config = tmp_path / "ck", tmp_path / "log.jsonl", tmp_path / "config.json"
    config.write_text('{"lr": 0.1}\n')
    r = _run(art, "--steps", "3", "--every", "10", "--checkpoint-every", "1", "--checkpoint", ck,
             "--log", log)
    assert r.exit_code == 0, r.output
    (ck / "step-00000003.safetensors").unlink()  # the newest left: step 2, before any row
    r = _run(art, "--steps", "3", "--every", "10", "--resume", "--checkpoint", ck, "--log", config)
    _one_line_error(r, "not the log of the run being resumed")
    assert config.read_text() == '{"lr": 0.1}\n'  # every file begins with the 0 bytes logged
    r = _run(art, "--steps", "3", "--every", "10", "--resume", "--checkpoint", ck, "--log", log)
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [3]


def test_sigkill_after_a_checkpoint_loses_no_log_row_and_resume_agrees(art, tmp_path,
                                                                      monkeypatch):
    args = [sys.executable, "-m", "luxc.cli", "run", str(art), "--steps", "100000", "--every",
            "1", "-q", "--checkpoint", "ck", "--checkpoint-every", "5", "--keep", "1", "--log",
            "log.jsonl"]
    child = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "ck").glob("step-*.safetensors")) and child.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the readiness marker: the first checkpoint
    assert child.poll() is None, child.stderr.read()
    # A second run on the same directory while the first holds it: refused, nothing touched.
    r = _run(art, "--steps", "2", "--checkpoint", tmp_path / "ck")
    _one_line_error(r, "is in use by another luxc run", str(tmp_path / "ck"))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    # --keep 1, but a kill between a write and its prune leaves two
    saved = max(int(p.name[5:13]) for p in (tmp_path / "ck").glob("step-*.safetensors"))
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()
             if line.endswith("}")]
    assert steps[:saved] == list(range(1, saved + 1))  # every row up to the checkpoint on disk
    monkeypatch.chdir(tmp_path)  # the same command, relative paths and all, in this process
    r = _run(*args[4:5], "--steps", saved + 3, *args[7:], "--resume")
    assert r.exit_code == 0, r.output
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, saved + 4))  # cut back to the checkpoint, then continued


# A full disk: one line naming the file, the previous files kept, the state saved


@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    """Every write into ``tmp_path / "full"`` fails with ENOSPC, as on a full file system."""
    full = tmp_path / "full"
    full.mkdir()
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(full)) and full_disk_on[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    full_disk_on = [False]
    monkeypatch.setattr(os, "write", write)
    return full, full_disk_on


def test_a_full_disk_for_a_checkpoint_or_save_state_names_the_file_and_keeps_the_old(
        art, full_disk):
    full, on = full_disk
    ck, state = full / "ck", full / "s.safetensors"
    r = _run(art, "--steps", "2", "--checkpoint-every", "2", "--checkpoint", ck, "--save-state",
             state)
    assert r.exit_code == 0, r.output
    before = _tree(full)
    on[0] = True
    r = _run(art, "--steps", "4", "--checkpoint-every", "2", "--resume", "--checkpoint", ck)
    _one_line_error_after_steps(r, f"could not write {ck / 'step-00000004.safetensors'}")
    r = _run(art, "--steps", "2", "--save-state", state)
    _one_line_error_after_steps(r, f"could not write {state}")
    assert _tree(full) == before  # the old files, and no temporary left behind


def _one_line_error_after_steps(r, words):
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert words in last and "No space left on device" in last and "unchanged" in last, r.output
    assert "Traceback" not in r.output and "Errno" not in r.output


def test_a_full_disk_for_the_log_stops_the_run_and_still_saves_its_state(art, tmp_path,
                                                                         full_disk):
    full, on = full_disk
    on[0] = True
    ck = tmp_path / "ck"
    r = _run(art, "--steps", "10", "--every", "1", "--log", full / "log.jsonl", "--checkpoint",
             ck)
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert f"--log {full / 'log.jsonl'}: could not write (No space left on device)" in last
    assert f"the state is in {ck}" in last and "Traceback" not in r.output
    (saved,) = ck.glob("step-*.safetensors")
    assert saved.name == "step-00000001.safetensors"  # stopped after the step whose row failed
    assert (full / "log.jsonl").read_bytes() == b""


# luxc predict never writes over its input


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_predict_refuses_an_out_that_is_its_input(art, tmp_path, how):
    x = tmp_path / "mine.npy"
    np.save(x, np.ones((5, 3), np.float32))
    before = x.read_bytes()
    out = {"same": x, "symlink": tmp_path / "link.npy", "hardlink": tmp_path / "hard.npy"}[how]
    if how == "symlink":
        out.symlink_to(x)
    elif how == "hardlink":
        os.link(x, out)
    r = CliRunner().invoke(main, ["predict", str(art), "--input", str(x), "--out", str(out)])
    _one_line_error(r, "is the --input file", "another name")
    assert x.read_bytes() == before
    r = CliRunner().invoke(main, ["predict", str(art), "--input", str(x), "--out",
                                  str(tmp_path / "y.npy")])
    assert r.exit_code == 0 and np.load(tmp_path / "y.npy").shape == (5, 1), r.output
