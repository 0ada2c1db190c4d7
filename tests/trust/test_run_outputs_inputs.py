"""Issue 18, the `luxc run` side: outputs never destroy an artifact or a user's file, a data file
is checked from its headers before it is read, and bad numbers are one line before any step."""

import struct
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
from luxc.cli.run_session import _PLOT_POINTS, _Curve


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust_run") / "step.luxc"
    model = nn.Chain(nn.Dense(3, 4, jax.nn.relu), nn.Dense(4, 1))
    ps, st = luxc.setup(jax.random.key(0), model)
    x = jnp.ones((8, 3))
    luxc.export_step(luxc.MSELoss(), (x, x[:, :1]), luxc.TrainState(model, ps, st, optax.sgd(0.1)),
                     out)
    return out


def _run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def _snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("flag, name", [("--save-state", "state.safetensors"),
                                        ("--save-state", "manifest.json"),
                                        ("--checkpoint", "."), ("--log", "log.jsonl"),
                                        ("--plot", "loss.png")])
def test_no_output_is_written_inside_the_artifact_it_runs(art, flag, name):
    before = _snapshot(art)
    r = _run(art, "--steps", "2", flag, art / name)
    assert r.exit_code == 1 and "inside the artifact" in r.output and "ran " not in r.output
    assert _snapshot(art) == before


def test_an_existing_file_that_is_no_checkpoint_is_never_overwritten(art, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    r = _run(art, "--steps", "1", "--save-state", notes)
    assert r.exit_code == 1 and "is not a luxc checkpoint" in r.output
    assert "remove it yourself" in r.output and notes.read_text() == "my notes"
    ckpt = tmp_path / "ckpt.safetensors"
    assert _run(art, "--steps", "1", "--save-state", ckpt).exit_code == 0
    assert _run(art, "--steps", "2", "--save-state", ckpt).exit_code == 0  # luxc's own: replaced


def test_a_compressed_member_declaring_a_huge_array_is_refused_from_its_header(art, tmp_path,
                                                                             monkeypatch):
    # 805M float32 values declared, a few bytes stored: a real bomb compresses to ~3 MB.
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (268435456, 3), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 4096
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("arr_0.npy", member)
        z.writestr("arr_1.npy", member.replace(b"(268435456, 3)", b"(268435456, 2)"))
    inflated = []  # every byte any reader got out of a compressed member
    for name in ("read", "read1"):
        real = getattr(zipfile.ZipExtFile, name)
        monkeypatch.setattr(zipfile.ZipExtFile, name,
                            lambda self, *a, real=real: inflated.append(len(b := real(self, *a))) or b)
    r = _run(art, "--data", tmp_path / "bomb.npz")
    assert r.exit_code == 1 and "data[1] holds float32[268435456, 2]; the step takes float32[N, 1]" \
        in r.output
    # Headers only: each member's 128-byte header was read, none of its 4096 bytes of data.
    assert 0 < sum(inflated) <= 2 * len(member) - 2 * 4096, inflated


def test_a_single_npy_as_data_is_one_clear_line(art, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 3), np.float32))
    r = _run(art, "--data", tmp_path / "x.npy")
    assert r.exit_code == 1 and "is one .npy array; give an .npz of the 2 data arrays" in r.output


@pytest.mark.parametrize("args", [("--steps", "1e30", "--steps-per-call", "1e30"),
                                  ("--steps", str(10**30), "--steps-per-call", str(10**30))])
def test_absurd_step_counts_are_one_line_before_loading(art, args):
    r = _run(art, *args)
    assert r.exit_code == 2 and "Invalid value for '--steps'" in r.output and "ran " not in r.output


def test_a_plot_in_another_format_is_refused_before_training(art, tmp_path):
    r = _run(art, "--steps", "2", "--plot", tmp_path / "x.mlir")
    assert r.exit_code == 1 and "as PNG" in r.output and "ran " not in r.output


def test_a_long_run_keeps_a_bounded_number_of_losses():
    curve = _Curve(keep=True)
    for step in range(1, 100_001):
        curve.add(step, 1.0 / step)
    assert len(curve.points) <= _PLOT_POINTS and curve.points[-1][0] >= 100_000 - curve.stride
    assert (curve.first, curve.last) == (1.0, 1e-5)
    quiet = _Curve(keep=False)
    quiet.add(1, 2.0)
    assert quiet.points == []


def test_run_without_keeping_losses_returns_none_and_k_step_programs_compile_before(art):
    loaded = luxc.load(art)
    loaded.prepare(3, 7)  # 7 steps, 3 a call: calls of 3, 3 and 1 (the plain step)
    assert set(loaded._scans) == {(3, False)}
    compiled = dict(loaded._scans)
    assert loaded.run(7, steps_per_call=3, keep_losses=False) == []
    assert loaded._scans == compiled and loaded.step_count == 7  # nothing compiled while timed
