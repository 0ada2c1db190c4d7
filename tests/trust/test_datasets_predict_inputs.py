"""A dataset or a predict input someone else wrote (issue 28, part C): it never blocks, never
reads a file its links point at, never inflates past a bound, and every bad file is one line
naming it; batches cost O(batch) with the same order as ever; predict runs in batches.

The huge inputs are cheap: sparse files (``truncate``) and headers that lie.
"""

import io
import os
import textwrap
import zipfile

import numpy as np
import pytest

import luxc
from luxc.runtime.artifacts import ArraySpec
from luxc.runtime.data import _dataset as dataset_module
from luxc.runtime.data import _npy_rows as npy_rows
from luxc.runtime.data._dataset import Dataset
from luxc.runtime.files._errors import ArtifactError
from tests.cli.test_run_dataset import FACTORY  # Dense-BatchNorm-Dense, batch 8, x (8, 3), y (8, 1)
from tests.support import compile_then_run_each, run_python

SPECS = [ArraySpec((8, 3), "float32"), ArraySpec((8, 1), "float32")]
NAMES = ["data[0]", "data[1]"]


def _xy(n=100, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    return x, x.sum(1, keepdims=True)


def _directory(path, *arrays):
    path.mkdir()
    for i, a in enumerate(arrays):
        np.save(path / f"{i}.npy", a)
    return path


def _header(shape, dtype="<f4") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": dtype, "fortran_order": False,
                                              "shape": shape})
    return out.getvalue()


def _lying_npz(path, rows, compression, data=b""):
    """An .npz whose members' headers declare ``rows`` samples the step takes, with ``data``
    (a few bytes) behind each header."""
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("arr_0.npy", _header((rows, 3)) + data)
        z.writestr("arr_1.npy", _header((rows, 1)) + data)
    return path


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


BAD_PREDICT_INPUTS = {  # how x.npy is written -> the message
    "truncated": (lambda p: p.write_bytes(_header((100, 3)) + bytes(40)),
                  "x (--input x.npy) is truncated: its header declares float32[100, 3] (1.17 "
                  "KiB) but the file holds 40 bytes of data"),
    "symlink-loop": (lambda p: p.symlink_to("x.npy"),
                     "cannot read x (--input x.npy): Too many levels of symbolic links"),
}


def _cases(mkdir, work):
    """Each case after ``luxc compile``: (its directory, its commands, run there in order)."""
    art, train = work / "step.luxc", work / "train.npz"
    cases = {}
    for command, args in {
            "--data": ["run", art, "--steps", "2", "--data", "ds"],
            "--eval-data": ["run", art, "--steps", "2", "--data", train, "--eval-data", "ds"],
            "predict --input": ["predict", art, "--input", "x.npy", "--out", "y.npy"]}.items():
        d = mkdir("fifo")
        os.mkfifo(_directory(d / "ds", _xy()[0]) / "1.npy")  # no writer: a blocking open
        os.mkfifo(d / "x.npy")  # would wait forever
        cases[f"fifo {command}"] = (d, [args])
    d = mkdir("follow")
    x, y = _xy()
    np.save(d / "y.npy", y)
    (_directory(d / "ds", x) / "1.npy").symlink_to(d / "y.npy")
    cases["follow"] = (d, [["run", art, "--data", "ds", "--steps", "2"],
                           ["run", art, "--data", "ds", "--steps", "2", "--follow-symlinks"]])
    d = mkdir("small-eval")
    np.savez(d / "eval.npz", *_xy(3, seed=9))  # the step's batch is 8; evaluation takes any
    cases["small eval"] = (d, [["run", art, "--data", train, "--steps", "3", "--eval-data",
                                "eval.npz", "--save-state", "s.safetensors"]])
    d = mkdir("batches")
    np.save(d / "x.npy", _xy(20, seed=4)[0])
    cases["batches"] = (d, [["predict", art, "--input", "x.npy", "--out", "y.npy",
                             "--batch-size", "7"]])
    for name, (make, _) in BAD_PREDICT_INPUTS.items():
        d = mkdir("bad-input")
        make(d / "x.npy")
        cases[name] = (d, [["predict", art, "--input", "x.npy", "--out", "y.npy"]])
    return cases


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``luxc compile`` of FACTORY, then every case of ``_cases``, in ONE fresh process (one
    jax start instead of one a command; its timeout fails an open that blocks): (the directory
    of the artifact, its source and train.npz, case -> (its directory, its commands' results))."""
    work = tmp_path_factory.mktemp("trust_datasets")
    (work / "model_src.py").write_text(FACTORY)
    np.savez(work / "train.npz", *_xy())
    cases = _cases(tmp_path_factory.mktemp, work)
    return work, compile_then_run_each(work, cases)


@pytest.fixture(scope="module")
def work(compiled):
    return compiled[0]


@pytest.fixture(scope="module")
def runs(compiled):
    return compiled[1]


# --- files that are not regular files, or not the stranger's own --------------------------------

@pytest.mark.slow  # a child process
@pytest.mark.parametrize("command", ["--data", "--eval-data", "predict --input"])
def test_a_fifo_named_like_a_data_file_is_refused_at_once_naming_it(runs, command):
    _, (r,) = runs[f"fifo {command}"]
    named = "x.npy" if command == "predict --input" else "ds/1.npy"
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert named in r.stderr and "is a named pipe (FIFO), not a regular file" in r.stderr


def test_a_symlink_inside_a_strangers_data_directory_is_refused_unless_followed(tmp_path):
    x, y = _xy()
    np.save(tmp_path / "private.npy", y * 7)  # the victim's own file
    ds = _directory(tmp_path / "ds", x)
    (ds / "1.npy").symlink_to(tmp_path / "private.npy")
    with pytest.raises(ArtifactError) as e:
        Dataset(ds, SPECS, NAMES)
    assert _one_line(e).startswith(f"data[1] ({ds / '1.npy'}) is a symbolic link; luxc follows "
                                   "no link inside a data directory unless asked "
                                   "(follow_symlinks=True")
    followed = Dataset(ds, SPECS, NAMES, follow_symlinks=True)
    np.testing.assert_array_equal(followed.arrays()[1], y * 7)


@pytest.mark.slow  # a child process
def test_follow_symlinks_on_the_command_line_trains_on_the_linked_file(runs):
    _, (refused, r) = runs["follow"]
    assert refused.returncode == 1 and "is a symbolic link" in refused.stderr
    assert r.returncode == 0 and "ran 2 steps (1-2)" in r.stdout, r.stderr


@pytest.mark.parametrize("kind, message", [
    ("directory", "data[1] ({}) is a directory, not a regular file"),
    ("loop", "data[1] ({}) is a symbolic link"),
    ("loop followed", "cannot read data[1] ({}): Too many levels of symbolic links"),
], ids=['directory', 'loop', 'loop-followed'])
def test_a_directory_or_a_symlink_loop_named_like_a_data_file_is_one_line(tmp_path, kind,
                                                                          message):
    x, _ = _xy()
    ds = _directory(tmp_path / "ds", x)
    if kind == "directory":
        (ds / "1.npy").mkdir()
    else:
        (ds / "1.npy").symlink_to("1.npy")
    with pytest.raises(ArtifactError) as e:
        Dataset(ds, SPECS, NAMES, follow_symlinks=kind == "loop followed")
    assert _one_line(e).startswith(message.format(ds / "1.npy")), e.value


# --- bounded memory: what is inflated, what is declared ------------------------------------------

@pytest.mark.slow  # a child process
def test_a_small_npz_declaring_2_26_rows_of_zeros_is_refused_before_inflating(tmp_path):
    # The adversary's 1.5 MB of deflated zeros, cut to 64 KiB: the refusal reads headers alone.
    path = _lying_npz(tmp_path / "bomb.npz", 1 << 26, zipfile.ZIP_DEFLATED, bytes(1 << 16))
    assert path.stat().st_size < 1 << 12  # a few KiB declaring 1 GiB
    code = textwrap.dedent(f"""
        import resource
        from luxc.runtime.artifacts import ArraySpec
        from luxc.runtime.data._dataset import Dataset
        from luxc.runtime.files._errors import ArtifactError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            Dataset({str(path)!r}, {SPECS!r}, {NAMES!r})
        except ArtifactError as e:
            print(e)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    r = run_python(code)
    message, grown_mib = r.stdout.strip().splitlines()
    assert message == (f"{path} needs 1.5 GiB of memory (largest part: data[0] ({path}:arr_0) "
                       "inflated (compressed), 768 MiB), more than the 512 MiB luxc allows a "
                       "dataset: raise the limit (max_memory=, in bytes) if you trust it, or save "
                       "it with np.savez (uncompressed members are read per batch)"), r.stderr
    assert int(grown_mib) < 64  # nothing inflated (the attack took 2.3 GB)


def test_the_memory_limit_can_be_raised_and_then_a_lying_member_is_truncated(tmp_path):
    path = _lying_npz(tmp_path / "bomb.npz", 1 << 20, zipfile.ZIP_DEFLATED, bytes(64))
    with pytest.raises(ArtifactError) as e:
        Dataset(path, SPECS, NAMES, max_memory=64 << 20)
    assert _one_line(e) == (f"data[0] ({path}:arr_0) is truncated: its header declares "
                            "float32[1048576, 3] (12 MiB), its data holds 64 bytes; write the "
                            ".npz again")


@pytest.mark.parametrize("compression, message", [
    (zipfile.ZIP_STORED, "data[0] ({}:arr_0) is truncated: its header declares "
                         "float32[17179869184, 3] (192 GiB) but the file holds 0 bytes of data"),
    (zipfile.ZIP_DEFLATED, "{} needs 384 GiB of memory (largest part: data[0] ({}:arr_0) "
                           "inflated (compressed), 192 GiB)"),
], ids=['stored', 'deflated'])
def test_a_declared_2_34_row_member_is_one_line_not_a_memory_error(tmp_path, compression,
                                                                   message):
    path = _lying_npz(tmp_path / "huge.npz", 1 << 34, compression)
    with pytest.raises(ArtifactError) as e:
        Dataset(path, SPECS, NAMES)
    assert _one_line(e).startswith(message.format(path, path)), e.value


def test_a_truncated_compressed_member_is_one_line_naming_the_file_and_member(tmp_path):
    x, y = _xy()
    stored = io.BytesIO()
    np.save(stored, x)
    with zipfile.ZipFile(tmp_path / "cut.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", stored.getvalue()[:-600])  # a well-formed zip of a cut member
        z.writestr("y.npy", _header((100, 1)) + y.tobytes())
    with pytest.raises(ArtifactError) as e:
        Dataset(tmp_path / "cut.npz", SPECS, NAMES)
    assert _one_line(e) == (f"data[0] ({tmp_path / 'cut.npz'}:x) is truncated: its header "
                            "declares float32[100, 3] (1.17 KiB), its data holds 600 bytes; "
                            "write the .npz again")


def test_a_cut_npz_file_is_one_line(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "cut.npz", x, y)
    os.truncate(tmp_path / "cut.npz", (tmp_path / "cut.npz").stat().st_size // 2)
    with pytest.raises(ArtifactError) as e:
        Dataset(tmp_path / "cut.npz", SPECS, NAMES)
    assert _one_line(e) == f"cannot read {tmp_path / 'cut.npz'} as .npz: File is not a zip file"


def _bad_magic(archive: bytearray) -> None:
    second = archive.index(b"PK\x03\x04", 10)  # the second entry's local header
    archive[second:second + 4] = b"XXXX"


def _encrypted(archive: bytearray) -> None:
    archive[archive.index(b"PK\x01\x02") + 8] |= 1  # the first entry's "encrypted" flag


@pytest.mark.parametrize("damage, message", [
    (_bad_magic, "cannot read data[1] ({}:arr_1): Bad magic number"),
    (_encrypted, "cannot read data[0] ({}:arr_0): File <ZipInfo filename='arr_0.npy'"),
], ids=['bad-magic', 'encrypted'])
def test_a_damaged_or_encrypted_npz_entry_is_one_line_naming_the_member(tmp_path, damage,
                                                                        message):
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x, y)
    data = bytearray((tmp_path / "d.npz").read_bytes())
    damage(data)
    (tmp_path / "d.npz").write_bytes(data)
    with pytest.raises(ArtifactError) as e:
        Dataset(tmp_path / "d.npz", SPECS, NAMES)
    assert _one_line(e).startswith(message.format(tmp_path / "d.npz")), e.value


def test_a_truncated_npy_in_a_data_directory_is_one_line_naming_it(tmp_path):
    x, y = _xy()
    ds = _directory(tmp_path / "ds", x, y)
    os.truncate(ds / "0.npy", 128 + 600)
    with pytest.raises(ArtifactError) as e:
        Dataset(ds, SPECS, NAMES)
    assert _one_line(e) == (f"data[0] ({ds / '0.npy'}) is truncated: its header declares "
                            "float32[100, 3] (1.17 KiB) but the file holds 600 bytes of data; "
                            "write it again (np.save)")


def test_a_fortran_order_file_is_one_line_with_the_fix(tmp_path):
    x, y = _xy()
    ds = _directory(tmp_path / "ds", np.asfortranarray(x), y)  # np.save keeps Fortran order
    with pytest.raises(ArtifactError) as e:
        Dataset(ds, SPECS, NAMES)
    assert _one_line(e) == (f"data[0] ({ds / '0.npy'}) is stored in Fortran order; save it in C "
                            "order (np.save(F, np.ascontiguousarray(x)))")


def test_a_file_truncated_during_the_run_stops_with_one_line_not_sigbus(tmp_path):
    x, y = _xy()
    ds = _directory(tmp_path / "ds", x, y)
    data = Dataset(ds, SPECS, NAMES)
    np.testing.assert_array_equal(data.batch(0)[0], x[np.sort(
        np.random.default_rng([0, 0]).permutation(100)[:8])])
    os.truncate(ds / "0.npy", 128)  # between two steps: a mapped file would now raise SIGBUS
    with pytest.raises(ArtifactError) as e:
        data.batch(1)
    assert _one_line(e) == (f"data[0] ({ds / '0.npy'}) became shorter while luxc read it "
                            "(another program truncated or rewrote it); restore the file and "
                            "run again")


@pytest.mark.slow  # a child process
def test_luxc_run_stops_with_one_line_when_its_data_is_truncated_between_steps(work, tmp_path):
    x, y = _xy()
    ds = _directory(tmp_path / "ds", x, y)
    code = textwrap.dedent(f"""
        import os
        from luxc.cli import main
        from luxc.runtime.data._dataset import Dataset
        batch = Dataset.batch
        def truncating(self, i):  # another program truncates 0.npy after step 2
            if i == 2:
                os.truncate({str(ds / "0.npy")!r}, 128)
            return batch(self, i)
        Dataset.batch = truncating
        main(["run", {str(work / "step.luxc")!r}, "--data", {str(ds)!r}, "--steps", "5"],
             prog_name="luxc")
    """)
    r = run_python(code)
    assert r.returncode == 1, r.stderr  # not -SIGBUS
    assert "step 2  loss" in r.stdout and "step 3" not in r.stdout
    assert r.stderr.strip() == (f"Error: data[0] ({ds / '0.npy'}) became shorter while luxc read "
                                "it (another program truncated or rewrote it); restore the file "
                                "and run again")


def test_a_sparse_dataset_whose_shuffle_exceeds_the_bound_is_one_line(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for i, width in enumerate((3, 1)):  # 2^27 samples: 2 GiB of sparse files, 1 GiB to shuffle
        (ds / f"{i}.npy").write_bytes(_header((1 << 27, width)))
        os.truncate(ds / f"{i}.npy", 128 + (1 << 29) * width)
    with pytest.raises(ArtifactError) as e:
        Dataset(ds, SPECS, NAMES)
    assert _one_line(e).startswith(f"{ds} needs 1 GiB of memory (largest part: the epoch's "
                                   "permutation, 1 GiB), more than the 512 MiB")


def test_uncompressed_members_and_npy_files_are_read_per_batch(tmp_path, monkeypatch):
    x, y = _xy(4096)
    np.savez(tmp_path / "s.npz", x, y)
    sources = [Dataset(tmp_path / "s.npz", SPECS, NAMES),
               Dataset(_directory(tmp_path / "ds", x, y), SPECS, NAMES)]
    read = []
    real = os.preadv
    monkeypatch.setattr(npy_rows.os, "preadv", lambda fd, bufs, at: read.append(
        sum(len(b) for b in bufs)) or real(fd, bufs, at))
    for data in sources:
        read.clear()
        data.batch(5)
        assert sum(read) <= 8 * (3 + 1) * 4  # the batch's rows, not the 64 KiB file


# --- batches: the same order, a permutation per epoch -------------------------------------------

@pytest.mark.parametrize("store", ["directory", "savez", "savez_compressed"])
def test_the_batch_order_is_the_documented_permutation(tmp_path, store):
    x, y = _xy()
    path = _directory(tmp_path / "ds", x, y) if store == "directory" else tmp_path / "d.npz"
    if store != "directory":
        getattr(np, store)(path, x, y)
    data = Dataset(path, SPECS, NAMES, seed=3)
    for i in range(40):  # 12 batches an epoch, 4 samples dropped
        epoch, position = divmod(i, 12)
        idx = np.sort(np.random.default_rng([3, epoch]).permutation(100)[position * 8:][:8])
        got = data.batch(i)
        np.testing.assert_array_equal(got[0], x[idx])
        np.testing.assert_array_equal(got[1], y[idx])


def test_the_permutation_is_drawn_once_per_epoch(tmp_path, monkeypatch):
    x, y = _xy()
    data = Dataset(_directory(tmp_path / "ds", x, y), SPECS, NAMES)
    drawn = []
    real = dataset_module.epoch_order
    monkeypatch.setattr(dataset_module, "epoch_order",
                        lambda *a: drawn.append(a[1]) or real(*a))
    for i in range(36):  # 3 epochs of 12 steps
        data.batch(i)
    assert drawn == [0, 1, 2]


# --- evaluation and prediction -------------------------------------------------------------------

@pytest.mark.slow  # a child process
def test_eval_data_with_fewer_samples_than_the_training_batch_is_evaluated(work, runs,
                                                                          tmp_path):
    d, (r,) = runs["small eval"]
    gx, gy = _xy(3, seed=9)  # what eval.npz holds
    assert r.returncode == 0, r.stderr
    last = [line for line in r.stdout.splitlines() if line.startswith("eval step 3")]
    namespace: dict = {}
    exec((work / "model_src.py").read_text(), namespace)
    ts = luxc.load_state(d / "s.safetensors", like=namespace["factory"]()[2])
    want = float(luxc.MSELoss()(ts.model, ts.parameters, luxc.testmode(ts.states), (gx, gy))[0])
    assert last and abs(float(last[0].split()[4]) - want) <= 1e-5 * max(1, abs(want)), r.stdout
    with pytest.raises(ArtifactError) as e:
        Dataset(_directory(tmp_path / "empty", gx[:0], gy[:0]), SPECS, NAMES, evaluation=True)
    assert _one_line(e) == f"{tmp_path / 'empty'} holds 0 samples; give at least 1"


def test_an_evaluation_set_over_the_memory_bound_is_one_line(tmp_path):
    x, y = _xy(1000)
    np.savez(tmp_path / "eval.npz", x, y)
    with pytest.raises(ArtifactError) as e:
        Dataset(tmp_path / "eval.npz", SPECS, NAMES, evaluation=True, max_memory=8000)
    assert _one_line(e).startswith(f"{tmp_path / 'eval.npz'} needs 15.6 KiB of memory (largest "
                                   "part: every sample, 15.6 KiB), more than the 7.81 KiB")


@pytest.mark.slow  # a child process
def test_predict_in_batches_equals_one_call(work, runs):
    d, (r,) = runs["batches"]
    assert r.returncode == 0, r.stderr
    assert "(20 samples in 3 batches of up to 7;" in r.stdout
    one_call = luxc.load(work / "step.luxc").predict(np.load(d / "x.npy"))
    np.testing.assert_allclose(np.load(d / "y.npy"), one_call, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # a child process
def test_predict_memory_stays_bounded_on_a_large_input(work, tmp_path):
    inputs = {}
    for rows in (16, 1 << 23):  # 96 MiB in; one call held > 700 MiB
        inputs[rows] = path = tmp_path / f"x{rows}.npy"
        path.write_bytes(_header((rows, 3)))
        os.truncate(path, 128 + rows * 12)  # a sparse file of zeros
    # One process, the small input first: the peak the large one adds to it is what it needs.
    code = textwrap.dedent(f"""
        import resource
        from luxc.cli import main
        for rows, path in {({rows: str(path) for rows, path in inputs.items()})!r}.items():
            main(["predict", {str(work / "step.luxc")!r}, "--input", path, "--out",
                  {str(tmp_path)!r} + f"/y{{rows}}.npy"], standalone_mode=False)
            print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, flush=True)
    """)
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    small, large = (int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("PEAK"))
    assert large - small < 96, (small, large)
    y = np.load(tmp_path / f"y{1 << 23}.npy", mmap_mode="r")
    assert y.shape == (1 << 23, 1)
    np.testing.assert_allclose(y[-3:], np.load(tmp_path / "y16.npy")[:3], rtol=1e-6)


@pytest.mark.slow  # a child process
@pytest.mark.parametrize("name", BAD_PREDICT_INPUTS)
def test_a_bad_predict_input_is_one_line(runs, name):
    d, (r,) = runs[name]
    _, message = BAD_PREDICT_INPUTS[name]
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"Error: {message}"), r.stderr
    assert not (d / "y.npy").exists()


# --- names from the manifest and the stranger's directory are escaped ---------------------------

def test_data_names_and_file_names_are_escaped_in_dataset_errors(tmp_path):
    names = ["x\x1b]52;c;ZWNobyBwd25lZA==\x07", "y\nsigned      by this user's luxc key"]
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x[:, :2], y)
    with pytest.raises(ArtifactError) as e:
        Dataset(tmp_path / "d.npz", SPECS, names)
    assert _one_line(e).startswith("x\\x1b]52;c;ZWNobyBwd25lZA==\\x07 holds float32[100, 2]")
    with pytest.raises(ArtifactError) as e:
        Dataset(tmp_path / "d.npz", SPECS[:1], names[:1] + ["\x1b[8m"])
    assert "\x1b" not in str(e.value) and "\\x1b" in str(e.value)
    ds = _directory(tmp_path / "ds", x)
    os.mkfifo(ds / "1\x1b[8m.npy")
    with pytest.raises(ArtifactError) as e:
        Dataset(ds, SPECS, NAMES)
    assert _one_line(e).startswith(f"data[1] ({ds}/1\\x1b[8m.npy) is a named pipe")

