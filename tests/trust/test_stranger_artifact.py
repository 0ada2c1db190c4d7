"""Adversarial tests, round 2 (issue 18): receiving a stranger's artifact. Planted modules never
run, an endless step stops on Ctrl-C or a time limit, sizes are bounded before any read,
manifest text is shown escaped and the manifest must be the module's signature."""

import os
import signal
import subprocess
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import luxc
from luxc.cli import main
from luxc.runtime.artifacts import _format as artifact_format
from luxc.runtime.files import _bounded_read as bounded_read
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.trust._module_check import check_untrusted
from tests.trust._artifacts import (
    LUXC,
    exported_with_custom_call,
    read_manifest,
    replace_file,
    run_luxc,
    unsigned,
    write_manifest,
)

FORGED = "Chain(...)\nsigned      by this user's luxc key\x1b]52;c;aGk=\x07\x1b[8mhidden\u202e"


def _plant(directory, marker):
    for name in ("json.py", "numpy.py", "sitecustomize.py"):
        (directory / name).write_text(f"open({str(marker / name)!r} + '-' + __file__.replace('/', "
                                      "'_'), 'w').close()\n")


def _inspect(d, *args):
    return CliRunner().invoke(main, ["inspect", str(d), *args])


# ---------------------------------------------------------------- code execution


@pytest.mark.slow
def test_modules_planted_beside_the_artifact_or_in_the_working_directory_never_run(art, tmp_path,
                                                                                monkeypatch):
    marker, cwd = tmp_path / "ran", tmp_path / "cwd"
    marker.mkdir(), cwd.mkdir()
    unsigned(art)  # its StableHLO goes through the check child
    _plant(art, marker)
    _plant(cwd, marker)
    r = run_luxc("run", ".", "--steps", "1", cwd=art)
    assert r.returncode == 0, r.stderr
    r = run_luxc("run", art, "--steps", "1", cwd=cwd)
    assert r.returncode == 0, r.stderr
    r = run_luxc("profile", ".", "--steps", "1", cwd=art)
    assert r.returncode == 0, r.stderr
    monkeypatch.chdir(art)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        luxc.load(".").run(1)
    assert sorted(os.listdir(marker)) == []


def test_inspect_names_files_the_manifest_does_not_list_and_reads_none_of_them(art, monkeypatch):
    (art / "json.py").write_text("raise SystemExit('ran')\n")
    reads = []
    monkeypatch.setattr(artifact_format, "read_regular",
                        lambda path, *a: reads.append(Path(path).name) or bounded_read.read_regular(path, *a))
    r = _inspect(art)
    assert r.exit_code == 0, r.output
    assert "not listed  json.py: not part of the artifact; luxc never reads or runs them" in r.output
    assert sorted(reads) == ["manifest.json", "manifest.sig"]  # lazy: no listed file is read


# ---------------------------------------------------------------- hangs and resources


@pytest.mark.slow
@pytest.mark.parametrize("command", [("profile",), ("profile", "--ops", "3")])
def test_sigint_stops_a_strangers_endless_step(endless, tmp_path, command):
    # `luxc profile DIR [--ops]` runs a stranger's step under luxc run's guard too. `luxc run`:
    # test_native_kernels.py::test_a_stopped_strangers_step_ends_in_one_line_with_a_checkpoint
    # asserts this of it (and its last line and checkpoint), after the same Ctrl-C.
    p = subprocess.Popen([LUXC, command[0], endless, "--steps", "1", *command[1:]], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Readiness, not a sleep: luxc says so once Ctrl-C is its to handle.
        for line in iter(p.stderr.readline, ""):
            if "Ctrl-C stops it" in line:
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err[-2000:]  # one line and Ctrl-C's code, not SIGABRT (134)
    assert "terminate called" not in err and "Traceback" not in err


def test_the_op_profile_of_an_unsigned_artifact_checks_its_module_as_run_does(art):
    replace_file(art, "step.jaxexport", exported_with_custom_call("my_native_kernel"))
    r = CliRunner().invoke(main, ["profile", str(art), "--ops", "3", "--steps", "1"])
    assert r.exit_code != 0
    assert "calls native functions my_native_kernel by name" in r.output.strip().splitlines()[-1]


def test_the_op_profile_of_an_unsigned_artifact_runs_guarded_and_changes_no_state(art, monkeypatch):
    from luxc.runtime.artifacts import _loaded_step as loaded_step

    unsigned(art)
    calls = []
    monkeypatch.setattr(loaded_step, "guarded", lambda call, *a: calls.append(a) or call())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = luxc.load(art)
    before = [x.copy() for x in jax.device_get(loaded.state)]
    records = loaded.profile(steps=3)
    assert records and all(0 <= r.share for r in records)
    assert len(calls) >= 3  # every profiled call went through the guard
    assert all((a == b).all() for a, b in zip(before, jax.device_get(loaded.state), strict=True))


@pytest.mark.slow
def test_a_time_limit_stops_an_endless_step_in_one_line(endless, tmp_path):
    # The step never ends: any limit is reached, and each second of it keeps a core spinning.
    r = run_luxc("run", endless, "--steps", "1", "--time-limit", "1", cwd=tmp_path)
    assert r.returncode == 1  # stopped by the limit (its last line says so), not by the hang guard
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: step 1 did not finish within the time limit; luxc stopped waiting for it (the "
        "state is the one before it)")


@pytest.mark.parametrize("listed_size", ["manifest", "file"])
def test_a_sparse_4_gib_state_file_is_refused_unread(art, listed_size, monkeypatch):
    with open(art / "state.safetensors", "r+b") as f:
        f.truncate(4 << 30)  # sparse: 4 GiB that take no disk
    m = read_manifest(art)
    if listed_size == "manifest":  # the manifest claims the size too
        m["files"]["state.safetensors"]["size"] = 4 << 30
    write_manifest(art, m)
    monkeypatch.setattr(artifact_format, "read_regular",
                        lambda path, *a: pytest.fail(f"read {path}") if Path(path).name == "state.safetensors"
                        else bounded_read.read_regular(path, *a))
    message = {"manifest": "more than the .* its shapes allow; luxc refuses it unread",
               "file": "has 4294967296 bytes; the manifest lists"}[listed_size]
    if listed_size == "manifest":
        with pytest.raises(ArtifactError, match=message):
            luxc.load(art)
    r = _inspect(art)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert __import__("re").search(message, r.output), r.output


# ---------------------------------------------------------------- silently accepted


def test_manifest_text_cannot_forge_a_line_or_drive_the_terminal(art):
    m = read_manifest(art)
    m["layout"]["model"] = m["layout"]["model_summary"] = m["layout"]["objective"] = FORGED
    m["created"] = m["versions"]["luxc"] = m["versions"]["jaxlib"] = FORGED  # jaxlib: a note
    m["layout"]["data_names"][0] = FORGED
    m["pass_report"][0]["name"] = FORGED
    write_manifest(art, m)
    outputs = [_inspect(art).output]
    r = CliRunner().invoke(main, ["run", str(art), "--steps", "1"])
    assert r.exit_code == 0, r.output
    outputs += [r.stdout, r.stderr]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = luxc.load(art)
    outputs += [str(w.message) for w in caught] + loaded.notes
    with pytest.raises(ArtifactError) as e:
        loaded.check_data([jnp.ones((2, 2)), jnp.ones((8, 1))])
    outputs.append(str(e.value))
    assert "\\x1b]52" in outputs[0] and "\\nsigned" in outputs[0]
    for text in outputs:
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert not any(line.startswith("signed      by") for line in text.splitlines())
    assert sum(line.startswith("signed ") for line in outputs[0].splitlines()) == 1


def test_inspect_shows_the_models_full_summary(art):
    model = luxc.nn.Chain(luxc.nn.Dense(3, 8, jax.nn.relu), luxc.nn.Dense(8, 1))
    out = _inspect(art).output
    for line in repr(model).splitlines():  # Lux's display: layers, parameter counts, total
        assert line.strip() in out
    assert "layer_1 = Dense(3 => 8, relu),  # 32 parameters" in out


@pytest.mark.parametrize("where", ["inputs", "outputs"])
def test_a_manifest_shape_that_disagrees_with_the_module_is_one_line_in_manifest_terms(art, where):
    m = read_manifest(art)
    for spec in (m["inputs"][0], m["outputs"][0]):  # consistent manifest, but not the module's
        spec["shape"] = [8, 4] if where == "inputs" else spec["shape"]
        spec["dtype"] = "float64" if where == "outputs" else spec["dtype"]
    write_manifest(art, m)
    name = m["layout"]["state_names"][0]
    kind = "input" if where == "inputs" else "input"  # the first difference is the input's
    with pytest.raises(ArtifactError, match=rf"the manifest says {kind} {__import__('re').escape(name)} "
                       r"is float(32|64)\[.*\], but step.jaxexport's StableHLO has float32"):
        luxc.load(art)


def test_a_safe_xla_option_out_of_range_is_dropped_with_a_note(art, mlp_losses):
    m = read_manifest(art)
    m["compile_options"]["xla_options"] = {"xla_backend_optimization_level": 10**12,
                                           "xla_cpu_prefer_vector_width": 256}
    write_manifest(art, m)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = luxc.load(art)
    assert any("ignored the XLA options xla_backend_optimization_level=1000000000000" in str(w.message)
               for w in caught)
    np.testing.assert_allclose(loaded.run(1), mlp_losses[:1], rtol=1e-5)


# ---------------------------------------------------------------- device code


@pytest.mark.parametrize("target", ["mosaic_gpu_v2", "tpu_custom_call"])
def test_device_kernels_in_an_unsigned_module_need_the_users_opt_in(target):
    module = exported_with_custom_call(target)
    with pytest.raises(ArtifactError, match=rf"runs compiled device kernels \({target}\).*"
                                            "allow_device_kernels=True to luxc.load"):
        check_untrusted(module, "art")
    check_untrusted(module, "art", allow_device_kernels=True)
