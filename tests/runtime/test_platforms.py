"""Artifacts for accelerators, compiled on this CPU-only machine: ``luxc compile --platform cpu
--platform cuda --platform tpu`` lowers the step (and the forward pass and the objective) once
for every platform, carries each platform's lowering in one module, and runs here as a
CPU-only artifact does."""

import json
import textwrap

import jax
import numpy as np
import pytest
from jax import export as jax_export

from tests.support import luxc_cli

pytestmark = pytest.mark.slow

# A GPT block (attention, LayerNorm, embeddings: examples/charlm.py) and a convolution.
FACTORY = textwrap.dedent("""
    import jax, jax.numpy as jnp, optax, luxc
    from luxc import nn
    from luxc.examples import charlm

    def gpt():
        cfg = charlm.Config(layers=1, dim=16, heads=2, context=8, batch=4)
        model = charlm.GPT(32, cfg)
        ps, st = luxc.setup(jax.random.key(0), model)
        ids = jax.random.randint(jax.random.key(1), (4, 9), 0, 32)
        return charlm.objective, (ids[:, :-1], ids[:, 1:]), luxc.TrainState(
            model, ps, st, optax.adam(1e-2))

    def conv():
        model = nn.Chain(nn.Conv((3, 3), 1, 4, jax.nn.relu), nn.FlattenLayer(), nn.Dense(144, 2))
        ps, st = luxc.setup(jax.random.key(0), model)
        x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
        return luxc.MSELoss(), (x, jnp.ones((8, 2))), luxc.TrainState(model, ps, st, optax.sgd(0.1))
""")
PLATFORMS = ("cpu", "cuda", "tpu")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("platforms")
    (d / "model_src.py").write_text(FACTORY)
    return d


def _compile(workdir, factory, out, *platforms):
    flags = [a for p in platforms for a in ("--platform", p)]
    r = luxc_cli("compile", f"model_src.py:{factory}", "--out", out, *flags, cwd=workdir)
    assert r.returncode == 0, r.stderr
    return json.loads((workdir / out / "manifest.json").read_text())


def _losses(workdir, out):
    r = luxc_cli("run", out, "--steps", "3", cwd=workdir)
    assert r.returncode == 0, r.stderr
    return [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("step ")]


@pytest.mark.parametrize("factory", ["gpt", "conv"])
def test_one_artifact_carries_the_step_for_cpu_cuda_and_tpu(workdir, factory):
    manifest = _compile(workdir, factory, f"{factory}-all.luxc", *PLATFORMS)
    assert manifest["platforms"] == list(PLATFORMS) and manifest["executable_platform"] == "cpu"
    for program in ("step", "forward", "evaluate"):
        data = (workdir / f"{factory}-all.luxc" / f"{program}.jaxexport").read_bytes()
        exported = jax_export.deserialize(bytearray(data))
        assert exported.platforms == PLATFORMS, program
        # One module, its lowering chosen by a platform index argument at run time.
        assert '{jax.global_constant = "_platform_index"}' in exported.mlir_module()


@pytest.mark.parametrize("factory", ["gpt", "conv"])
def test_the_multi_platform_artifact_trains_here_as_the_cpu_one_does(workdir, factory):
    _compile(workdir, factory, f"{factory}-cpu.luxc", "cpu")
    if not (workdir / f"{factory}-all.luxc").exists():
        _compile(workdir, factory, f"{factory}-all.luxc", *PLATFORMS)
    multi, cpu = _losses(workdir, f"{factory}-all.luxc"), _losses(workdir, f"{factory}-cpu.luxc")
    assert len(multi) == 3
    np.testing.assert_allclose(multi, cpu, rtol=1e-5)


def test_an_artifact_for_accelerators_only_lowers_here_and_refuses_to_run_here(workdir):
    manifest = _compile(workdir, "gpt", "gpt-accel.luxc", "cuda", "tpu")
    assert manifest["platforms"] == ["cuda", "tpu"] and manifest["executable_platform"] is None
    assert not (workdir / "gpt-accel.luxc" / "executable.bin").exists()
    exported = jax_export.deserialize(bytearray((workdir / "gpt-accel.luxc" / "step.jaxexport")
                                                .read_bytes()))
    assert exported.platforms == ("cuda", "tpu")
    r = luxc_cli("run", "gpt-accel.luxc", "--steps", "1", cwd=workdir)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        f"this artifact targets cuda, tpu but this machine runs {jax.default_backend()}; "
        f"recompile it with --platform {jax.default_backend()}")
