"""Steps whose buffers XLA:CPU's default heap settings would warn about or fail to serialize:
luxc sizes the heaps per module (``runtime/compiling/_options.py``)."""

import re
import textwrap

import pytest

from tests.support import run_python

# Steps whose buffers XLA:CPU's defaults would warn about or fail to serialize, each printing its
# loss. They run in one fresh process (XLA logs to the process's stderr, at every compile), each
# after a line naming it on both streams; the one that turns the persistent cache on runs last.
_HEAP_STEPS = {
    # XLA logs a warning for each buffer larger than its per-heap limit: luxc raises the limit.
    "large tensor": """
        model = nn.Dense(64, 16384)  # a (1024, 16384) f32 output: 64 MiB
        ps, st = luxc.setup(jax.random.key(0), model)
        ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
        x = jax.random.normal(jax.random.key(1), (1024, 64))
        data = (x, jnp.zeros((1024, 16384)))
        _, loss, _, _ = luxc.training.single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
        print("LOSS", float(loss))
    """,
    # XLA:CPU computes a bfloat16 matrix product in float32 and keeps that float32 product as
    # a temporary, twice the bytes of any tensor of the module: the heap limit must cover it.
    "bfloat16": """
        bf16 = jnp.bfloat16
        model = nn.Chain(nn.Dense(64, 16384, dtype=bf16), nn.Dense(16384, 1, dtype=bf16))
        ps, st = luxc.setup(jax.random.key(0), model)
        ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
        x = jax.random.normal(jax.random.key(1), (1024, 64), bf16)  # hidden (1024, 16384): 32 MiB
        data = (x, jnp.zeros((1024, 1), bf16))
        _, loss, _, _ = luxc.training.single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
        print("LOSS", float(loss))
    """,
    # Over 30 MiB of temporaries: training splits them into heaps, which XLA:CPU cannot
    # serialize; the persistent cache and an artifact get the one-heap executable instead.
    "large temporaries": """
        model = nn.Chain(nn.Dense(64, 4096, jax.nn.relu),
                         nn.Dense(4096, 64))  # (2048, 4096) f32 activations: 32 MiB each
        ps, st = luxc.setup(jax.random.key(0), model)
        ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
        x = jax.random.normal(jax.random.key(1), (2048, 64))
        luxc.runtime.persistent_cache.enable(DIR + "/cache")
        _, loss, _, _ = luxc.training.single_train_step(luxc.AutoXLA(), luxc.MSELoss(), (x, x), ts)
        luxc.export_step(luxc.MSELoss(), (x, x), ts, DIR + "/step.luxc")
        print("LOSS", float(loss))
    """,
}


@pytest.fixture(scope="module")
def heap_steps(tmp_path_factory):
    """The directory of the last step's cache and artifact, and each step's (stdout, stderr)."""
    d = tmp_path_factory.mktemp("heaps")
    script = f"import sys, jax, optax, luxc\nimport jax.numpy as jnp\nfrom luxc import nn\nDIR = {str(d)!r}\n"
    for name, step in _HEAP_STEPS.items():
        mark = f"=== heap step: {name} ==="
        script += f"print({mark!r}, flush=True); print({mark!r}, file=sys.stderr, flush=True)\n"
        script += textwrap.dedent(step)
    r = run_python(script)
    assert r.returncode == 0, r.stderr[-2000:]
    out, err = (re.split(r"^=== heap step: (.+) ===$", text, flags=re.M) for text in (r.stdout, r.stderr))
    out, err = dict(zip(out[1::2], out[2::2])), dict(zip(err[1::2], err[2::2]))
    return d, {name: (out[name], err[name]) for name in _HEAP_STEPS}


def _assert_step_without_heap_warnings(heap_steps, name: str) -> None:
    out, err = heap_steps[1][name]
    assert "LOSS" in out
    assert "per-heap size limit" not in err, err[-2000:]
    assert "Error writing persistent compilation cache entry" not in err, err[-2000:]


def test_a_step_with_a_tensor_larger_than_the_heap_limit_compiles_without_xla_warnings(heap_steps):
    _assert_step_without_heap_warnings(heap_steps, "large tensor")


def test_a_step_with_large_temporaries_is_still_cached_and_exported_with_its_executable(heap_steps):
    _assert_step_without_heap_warnings(heap_steps, "large temporaries")
    assert len(list((heap_steps[0] / "cache").glob("*.luxc-xla"))) == 1
    assert (heap_steps[0] / "step.luxc" / "executable.bin").is_file()


def test_a_bfloat16_step_compiles_without_xla_heap_warnings(heap_steps):
    _assert_step_without_heap_warnings(heap_steps, "bfloat16")
