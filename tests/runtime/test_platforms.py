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

from tests.support import luxc_cli_each

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
            model, ps, st, optax.sgd(1e-2, momentum=0.9))

    def conv():
        model = nn.Chain(nn.Conv((3, 3), 1, 4, jax.nn.relu), nn.FlattenLayer(), nn.Dense(144, 2))
        ps, st = luxc.setup(jax.random.key(0), model)
        x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
        return luxc.MSELoss(), (x, jnp.ones((8, 2))), luxc.TrainState(model, ps, st, optax.sgd(0.1))
""")
PLATFORMS = ("cpu", "cuda", "tpu")
# Each artifact the tests read: its factory and the platforms it is compiled for; and the steps
# `luxc run` takes of it.
ARTIFACTS = {"gpt-all": ("gpt", PLATFORMS), "conv-all": ("conv", PLATFORMS),
             "gpt-cpu": ("gpt", ("cpu",)), "conv-cpu": ("conv", ("cpu",)),
             "gpt-accel": ("gpt", ("cuda", "tpu"))}
STEPS = {"gpt-all": 3, "conv-all": 3, "gpt-cpu": 3, "conv-cpu": 3, "gpt-accel": 1}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Every artifact compiled by ``luxc compile`` in one process, then run by ``luxc run`` in
    another, which never traced a model (one process each instead of one per command): the
    directory, and each artifact's compile and run results by name."""
    d = tmp_path_factory.mktemp("platforms")
    (d / "model_src.py").write_text(FACTORY)
    compiles = luxc_cli_each([
        (d, ["compile", f"model_src.py:{factory}", "--out", f"{name}.luxc",
             *[a for p in platforms for a in ("--platform", p)]])
        for name, (factory, platforms) in ARTIFACTS.items()])
    runs = luxc_cli_each([(d, ["run", f"{name}.luxc", "--steps", STEPS[name]]) for name in ARTIFACTS])
    return d, dict(zip(ARTIFACTS, compiles)), dict(zip(ARTIFACTS, runs))


def _manifest(artifacts, name):
    d, compiles, _ = artifacts
    assert compiles[name].returncode == 0, compiles[name].stderr
    return json.loads((d / f"{name}.luxc" / "manifest.json").read_text())


def _losses(artifacts, name):
    _manifest(artifacts, name)
    r = artifacts[2][name]
    assert r.returncode == 0, r.stderr
    return [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("step ")]


@pytest.mark.parametrize("factory", ["gpt", "conv"])
def test_one_artifact_carries_the_step_for_cpu_cuda_and_tpu(artifacts, factory):
    manifest = _manifest(artifacts, f"{factory}-all")
    assert manifest["platforms"] == list(PLATFORMS) and manifest["executable_platform"] == "cpu"
    for program in ("step", "forward", "evaluate"):
        data = (artifacts[0] / f"{factory}-all.luxc" / f"{program}.jaxexport").read_bytes()
        exported = jax_export.deserialize(bytearray(data))
        assert exported.platforms == PLATFORMS, program
        # One module, its lowering chosen by a platform index argument at run time.
        assert '{jax.global_constant = "_platform_index"}' in exported.mlir_module()


@pytest.mark.parametrize("factory", ["gpt", "conv"])
def test_the_multi_platform_artifact_trains_here_as_the_cpu_one_does(artifacts, factory):
    multi, cpu = _losses(artifacts, f"{factory}-all"), _losses(artifacts, f"{factory}-cpu")
    assert len(multi) == 3
    np.testing.assert_allclose(multi, cpu, rtol=1e-5)


def test_an_artifact_for_accelerators_only_lowers_here_and_refuses_to_run_here(artifacts):
    manifest = _manifest(artifacts, "gpt-accel")
    assert manifest["platforms"] == ["cuda", "tpu"] and manifest["executable_platform"] is None
    assert not (artifacts[0] / "gpt-accel.luxc" / "executable.bin").exists()
    exported = jax_export.deserialize(bytearray((artifacts[0] / "gpt-accel.luxc" / "step.jaxexport")
                                                .read_bytes()))
    assert exported.platforms == ("cuda", "tpu")
    r = artifacts[2]["gpt-accel"]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        f"this artifact targets cuda, tpu but this machine runs {jax.default_backend()}; "
        f"recompile it with --platform {jax.default_backend()}")
