"""``luxc compile --mesh``: an artifact of a sharded step, inspected on one device, trained on
8 host devices like the one-device artifact, refused on too few devices; meshes compile refuses."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.support import luxc_cli_each

FACTORY = textwrap.dedent("""
    import jax, numpy as np, optax, luxc
    from luxc import nn

    def factory():
        model = nn.Chain(nn.Dense(4, 32, jax.nn.relu), nn.Dense(32, 8))
        ps, st = luxc.setup(jax.random.key(0), model)
        x = np.random.default_rng(1).standard_normal((64, 4), dtype=np.float32)  # numpy: no compile
        y = np.eye(8, dtype=np.float32)[np.arange(64) % 8]
        return luxc.MSELoss(), (x, y), luxc.TrainState(model, ps, st, optax.adam(1e-2))
""")


def _xla_flags(devices: int) -> str:
    return f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""


def _cli(*args, cwd, devices):
    return subprocess.run([sys.executable, "-m", "luxc.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XLA_FLAGS": _xla_flags(devices)})


def _cli_each(cwd, commands: list[list], devices: int) -> list[subprocess.CompletedProcess]:
    """``commands`` one after the other in one fresh process that has ``devices`` devices."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XLA_FLAGS", _xla_flags(devices))
        return luxc_cli_each([(cwd, args) for args in commands])


def _losses(r: subprocess.CompletedProcess) -> list[float]:
    assert r.returncode == 0, r.stderr[-2000:]
    return [float(line.split("loss")[1]) for line in r.stdout.splitlines() if line.startswith("step")]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The factory's step compiled with --mesh data=8 --strategy fsdp and on one device, a copy
    of the sharded artifact without this user's signature, and what the commands the tests
    check printed: each process runs every command that needs its number of devices."""
    tmp = tmp_path_factory.mktemp("artifacts")
    (tmp / "fac.py").write_text(FACTORY)
    sharded = _cli("compile", "fac.py:factory", "--out", "fsdp8", "--mesh", "data=8",
                   "--strategy", "fsdp", cwd=tmp, devices=8)
    assert sharded.returncode == 0, sharded.stderr
    shutil.copytree(tmp / "fsdp8", tmp / "unsigned")
    (tmp / "unsigned" / "manifest.sig").unlink()
    one, inspect, run_one = _cli_each(tmp, [["compile", "fac.py:factory", "--out", "one"],
                                            ["inspect", "fsdp8"], ["run", "one", "--steps", "3"]],
                                      devices=1)
    assert one.returncode == 0, one.stderr
    results = _cli_each(tmp, [["run", "fsdp8", "--steps", "3"], ["run", "unsigned", "--steps", "3"],
                              *(["compile", "fac.py:factory", "--out", "bad", "--mesh", mesh]
                                for mesh in BAD_MESHES)], devices=8)
    run_sharded, run_unsigned, *bad = results
    return {"inspect": inspect, "run one": run_one, "run fsdp8": run_sharded,
            "run unsigned": run_unsigned, "bad meshes": dict(zip(BAD_MESHES, bad)),
            "run on 2 devices": _cli("run", "fsdp8", "--steps", "1", cwd=tmp, devices=2)}


@pytest.mark.slow
def test_inspect_shows_the_mesh_and_each_inputs_sharding(artifacts):
    r = artifacts["inspect"]
    assert r.returncode == 0, r.stderr
    assert "mesh        data=8" in r.stdout
    assert "parameters['layer_2']['weight']: float32[8, 32] P(None, 'data')" in r.stdout
    assert "optimizer_state[0].count: int32[] P()" in r.stdout
    assert "data[0]: float32[64, 4] P('data',)" in r.stdout


@pytest.mark.slow
def test_a_sharded_artifact_trains_like_the_one_device_artifact(artifacts):
    one, sharded = _losses(artifacts["run one"]), _losses(artifacts["run fsdp8"])
    assert len(one) == len(sharded) == 3
    np.testing.assert_allclose(sharded, one, rtol=1e-5)
    # Without this user's signature: the module is checked in a child process on the same
    # mesh, then compiled from its StableHLO instead of loading the executable.
    r = artifacts["run unsigned"]
    assert "compiled its StableHLO instead" in r.stderr
    np.testing.assert_allclose(_losses(r), one, rtol=1e-5)


@pytest.mark.slow
def test_running_a_sharded_artifact_on_too_few_devices_says_what_it_needs(artifacts):
    r = artifacts["run on 2 devices"]
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: this artifact's step is sharded over 8 devices (--mesh data=8); "
        "this machine has 2: on CPU run it with XLA_FLAGS=--xla_force_host_platform_device_count=8, "
        "or compile it again without --mesh")


BAD_MESHES = {
    "data=16": "--mesh data=16 needs 16 devices; this machine has 8",
    "data": "--mesh takes AXIS=N (e.g. data=8); received 'data'",
}


@pytest.mark.slow
@pytest.mark.parametrize("mesh", list(BAD_MESHES))
def test_compile_refuses_a_mesh_it_cannot_build(artifacts, mesh):
    r = artifacts["bad meshes"][mesh]
    assert r.returncode != 0 and BAD_MESHES[mesh] in r.stderr
