"""What luxc's compile skips to keep its first step near jax.jit's (issue 24), and that skipping
it changes no result."""

import json
import re
import textwrap

from tests.support import run_python

_STEP = """
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
import luxc
from luxc import nn
from luxc.training import compute_objective, single_train_step
from jax._src.export import _export

jax_hook = _export._ensure_backends_initialized
model = nn.Dense(3, 3)
ps, st = luxc.setup(jax.random.key(0), model)
ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
x = jnp.eye(3) + 0.5

def objective(model, ps, st, x):
    y, st = model(x, ps, st)
    {body}
    return loss, st, {{}}

loss, _, _ = compute_objective(luxc.AutoXLA(), objective, x, ts)
eager, _, _ = compute_objective(luxc.AutoJAX(), objective, x, ts)
print(json.dumps({{"scipy": "scipy.linalg" in sys.modules, "loss": float(loss),
                  "eager": float(eager), "hook_restored": _export._ensure_backends_initialized is jax_hook}}))
"""


def _run(body: str) -> dict:
    r = run_python(textwrap.dedent(_STEP.format(body=body)))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_step_without_linear_algebra_does_not_load_lapack():
    # jax's lowering of Exported.call imports scipy.linalg for LAPACK (~0.2 s of the first
    # step); a module with no lapack_* custom call does not need it.
    out = _run("loss = jnp.mean(y ** 2)")
    assert not out["scipy"]
    assert out["hook_restored"]
    assert abs(out["loss"] - out["eager"]) <= 1e-6 * abs(out["eager"])


def test_an_artifact_calling_lapack_runs_in_a_process_that_never_traced_it(tmp_path):
    # `luxc run` lowers the artifact's module without tracing the model: nothing else in that
    # process loads LAPACK, so luxc's lowering must, for a module that calls it.
    import jax
    import jax.numpy as jnp
    import optax

    import luxc
    from luxc import nn
    from luxc.training import compute_objective
    from tests.support import luxc_cli

    def objective(model, ps, st, x):
        y, st = model(x, ps, st)
        return jnp.sum(jnp.linalg.cholesky(y.T @ y + 3 * jnp.eye(3))), st, {}

    model = nn.Dense(3, 3)
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.0))
    x = jnp.eye(3) + 0.5
    luxc.export_step(objective, x, ts, tmp_path / "step.luxc")
    eager, _, _ = compute_objective(luxc.AutoJAX(), objective, x, ts)
    r = luxc_cli("run", "step.luxc", "--steps", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    loss = float(re.search(r"step 1  loss (\S+)", r.stdout).group(1))
    assert abs(loss - float(eager)) <= 1e-5 * abs(float(eager)), r.stdout


def test_the_summary_taken_during_the_passes_is_the_one_parsing_gives():
    # The compile reads the module summary the passes' parse left (no second parse): it must
    # be the summary of the bytes that are compiled.
    import jax
    import jax.numpy as jnp

    from luxc.runtime.compiling import _module_ops as module_ops
    from luxc.runtime.compiling._executable import export, rewrite

    def f(x, w):
        return jnp.sum(jax.nn.relu(x @ w) / jnp.sqrt(jnp.sum(x * x) + 1.0))

    exported = export(f, (jnp.ones((4, 3)), jnp.ones((3, 2))))
    parsed = module_ops.summary(exported.mlir_module_serialized)
    new, _ = rewrite(exported, ["dot_flatten", "fuse_rsqrt"])
    remembered = module_ops.summary(new.mlir_module_serialized)
    assert remembered == module_ops.summary(new.mlir_module_serialized)  # the second one parses
    assert "stablehlo.dot_general" in remembered.op_names
    assert remembered.largest_tensor_bytes == parsed.largest_tensor_bytes == 4 * 3 * 4
