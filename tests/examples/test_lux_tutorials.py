"""Lux.jl's tutorials ported to luxc (``examples/lux/<Name>.py``, each a translation of Lux's
``examples/<Name>/main.jl`` at 6f4b96c), run as a user runs them, in their ``--quick`` mode:
what they print and the trend of their losses."""

import re
import subprocess
import sys

import numpy as np
import pytest

from tests.support import ROOT

EXAMPLES = ROOT / "examples" / "lux"
TUTORIALS = ("PolynomialFitting", "Basics", "PINN2DPDE", "RealNVP")

# Each tutorial runs as `python examples/lux/<Name>.py --quick` runs it, in a process of its own,
# forked from one that imported what every tutorial imports (jax, numpy, optax, luxc; importing
# them starts no thread and no device), so the four do not pay for that import one by one.
_RUNNER = r"""
import os, runpy, sys, traceback
import jax, jax.numpy, numpy, optax, luxc
for script, out in zip(sys.argv[1::2], sys.argv[2::2]):
    if os.fork() == 0:
        code = 1
        try:
            for fd, suffix in ((1, ".out"), (2, ".err")):
                os.dup2(os.open(out + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv, sys.path[0] = [script, "--quick"], os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = 0 if e.code in (None, 0) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.wait()
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Each tutorial's exit code, standard output and standard error."""
    tmp = tmp_path_factory.mktemp("tutorials")
    args = [str(p) for name in TUTORIALS for p in (EXAMPLES / f"{name}.py", tmp / name)]
    done = subprocess.run([sys.executable, "-c", _RUNNER, *args], capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    codes = [int(line) for line in done.stdout.split()]
    return {name: (code, (tmp / f"{name}.out").read_text(), (tmp / f"{name}.err").read_text())
            for name, code in zip(TUTORIALS, codes, strict=True)}


def _run(outputs, name: str) -> str:
    code, out, err = outputs[name]
    assert code == 0, err[-2000:]
    return out


def _numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", line)]


def test_polynomial_fitting_learns_the_quadratic(outputs):
    out = _run(outputs, "PolynomialFitting")
    losses = [float(m) for m in re.findall(r"Epoch: +\d+ \t Loss: (\S+)", out)]
    assert re.findall(r"Epoch: +(\d+)", out) == ["1", "51", "60"]  # epoch % 50 == 1 or the last
    assert losses[-1] < losses[0] / 10
    # y = x² - 2x + N(0, 0.1²): a fit within a few noise variances of the truth
    assert float(re.search(r"compiled forward pass: (\S+)", out)[1]) < 0.3


def test_basics_gradients_and_products_agree_with_closed_forms(outputs):
    lines = _run(outputs, "Basics").splitlines()
    grads = [np.array(_numbers(line.split(":", 1)[1])) for line in lines[:3]]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6)  # ∇(xᵀx/2) = x, reverse mode
    np.testing.assert_allclose(grads[2], grads[0], rtol=1e-6)  # forward mode
    jvp, vjp = (np.array(_numbers(line.split(":", 1)[1])) for line in lines[3:5])
    np.testing.assert_allclose(jvp, vjp, rtol=1e-6)  # f(x) = x²/2 has a symmetric Jacobian
    losses = [float(v) for v in re.findall(r"after +\d+ iterations: (\S+)", "\n".join(lines))]
    assert len(losses) == 2 and losses[-1] < losses[0] / 4  # 200 steps of Descent(0.01)


def test_pinn_rolling_mean_loss_falls_with_second_derivatives_in_the_compiled_loss(outputs):
    out = _run(outputs, "PINN2DPDE")
    rows = [_numbers(line) for line in out.splitlines() if line.startswith("Iteration")]
    # each row: loss (mean), physics (mean), data (mean), bc (mean)
    assert len(rows) == 6  # iterations 1, 51, ..., 251
    first, last = rows[1], rows[-1]  # the rolling means need 32 steps to fill
    assert last[1] < first[1] / 2, out
    assert last[3] < first[3], out  # the physics residual's mean falls too


def test_real_nvp_log_likelihood_improves(outputs):
    out = _run(outputs, "RealNVP")
    # 6 coupling MLPs: Dense(2=>16) 48, 3 × Dense(16=>16) 272, Dense(16=>4) 68 → 932 each
    assert "Total Trainable Parameters: 5592" in out
    losses = [float(v) for v in re.findall(r"Training Loss: (\S+)", out)]
    assert len(losses) == 4  # iterations 1, 100, 200, 300
    assert losses[-1] < losses[0] - 1.0  # negative log-likelihood per point, in nats
