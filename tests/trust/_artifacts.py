"""What the trust tests share: a small signed step to copy and attack, the edits an attacker
with write access makes (bytes replaced, hashes recomputed, signature dropped), and the ``luxc``
console script a user runs.

The step: a 3-8-1 relu MLP trained with Adam(1e-2) on ``x = linspace(-1, 1, 24)`` as (8, 3),
``y = sum(x, axis=1)`` as (8, 1), with ``MSELoss``."""

import dataclasses
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import luxc
from luxc.runtime.files._bounded_read import sha256

LUXC = str(Path(sys.executable).parent / "luxc")  # the console script a user runs


def run_luxc(*args, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the ``luxc`` console script (not ``python -m``) in ``cwd``, as a user does."""
    return subprocess.run([LUXC, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def step_data() -> tuple[jax.Array, jax.Array]:
    """The batch: x (8, 3) evenly spaced in [-1, 1], y (8, 1) the sum of each row."""
    x = jnp.linspace(-1, 1, 24).reshape(8, 3)
    return x, jnp.sum(x, axis=1, keepdims=True)


def mlp_state(seed: int = 0) -> luxc.TrainState:
    """The 3-8-1 relu MLP's train state with Adam(1e-2), parameters from ``key(seed)``."""
    model = luxc.nn.Chain(luxc.nn.Dense(3, 8, jax.nn.relu), luxc.nn.Dense(8, 1))
    ps, st = luxc.setup(jax.random.key(seed), model)
    return luxc.TrainState(model, ps, st, optax.adam(1e-2))


def eager_losses(ts: luxc.TrainState, steps: int) -> tuple[list[float], luxc.TrainState]:
    """The reference: ``steps`` eager (AutoJAX) steps of ``MSELoss`` on ``step_data()`` from
    ``ts``: their losses and the state after them."""
    losses = []
    for _ in range(steps):
        _, loss, _, ts = luxc.training.single_train_step(luxc.AutoJAX(), luxc.MSELoss(), step_data(), ts)
        losses.append(float(loss))
    return losses, ts


def export_quietly(objective, data, ts: luxc.TrainState, out: Path) -> Path:
    """``luxc.export_step`` without its notes (a test asserts on what comes after)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        luxc.export_step(objective, data, ts, out)
    return out


def read_manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def write_manifest(d: Path, manifest: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(manifest))


def replace_file(d: Path, name: str, data: bytes, *, relist: bool = True) -> None:
    """What an attacker with write access does: new bytes, hash and size recomputed."""
    (d / name).write_bytes(data)
    if relist:
        m = read_manifest(d)
        m["files"][name] = {"sha256": sha256(data), "size": len(data)}
        write_manifest(d, m)


def unsigned(d: Path) -> Path:
    """``d`` without its signature: a stranger's artifact."""
    (d / "manifest.sig").unlink()
    return d


def exported_with_custom_call(target: str) -> bytes:
    """A serialized module (f32[3] -> f32[3]) whose one op calls the native function ``target``
    by name."""
    from jax import export as jax_export
    from jaxlib.mlir import ir

    from luxc.runtime._jax_internal import ir_context, serialize_module
    from luxc.runtime.compiling._executable import _TARGET_VERSION

    exported = jax_export.export(jax.jit(lambda x: x * 2.0))(jnp.ones(3))
    text = textwrap.dedent(f"""
        module @jit_f attributes {{jax.uses_shape_polymorphism = false, mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32}} {{
          func.func public @main(%arg0: tensor<3xf32>) -> (tensor<3xf32> {{jax.result_info = "result"}}) {{
            %0 = stablehlo.custom_call @{target}(%arg0) : (tensor<3xf32>) -> tensor<3xf32>
            return %0 : tensor<3xf32>
          }}
        }}""")
    with ir_context():
        data = serialize_module(ir.Module.parse(text), _TARGET_VERSION)
    return bytes(dataclasses.replace(exported, mlir_module_serialized=data).serialize())
