"""Lux.jl's tutorials ported to luxc (``examples/lux/<Name>.py``, each a translation of Lux's
``examples/<Name>/main.jl`` at 6f4b96c), run as a user runs them, in their ``--quick`` mode:
what they print and the trend of their losses."""

import re
import subprocess
import sys

import numpy as np

from tests.support import ROOT

EXAMPLES = ROOT / "examples" / "lux"


def _run(name: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", line)]


def test_polynomial_fitting_learns_the_quadratic():
    out = _run("PolynomialFitting")
    losses = [float(m) for m in re.findall(r"Epoch: +\d+ \t Loss: (\S+)", out)]
    assert re.findall(r"Epoch: +(\d+)", out) == ["1", "51", "60"]  # epoch % 50 == 1 or the last
    assert losses[-1] < losses[0] / 10
    # y = x² - 2x + N(0, 0.1²): a fit within a few noise variances of the truth
    assert float(re.search(r"compiled forward pass: (\S+)", out)[1]) < 0.3


def test_basics_gradients_and_products_agree_with_closed_forms():
    lines = _run("Basics").splitlines()
    grads = [np.array(_numbers(line.split(":", 1)[1])) for line in lines[:3]]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6)  # ∇(xᵀx/2) = x, reverse mode
    np.testing.assert_allclose(grads[2], grads[0], rtol=1e-6)  # forward mode
    jvp, vjp = (np.array(_numbers(line.split(":", 1)[1])) for line in lines[3:5])
    np.testing.assert_allclose(jvp, vjp, rtol=1e-6)  # f(x) = x²/2 has a symmetric Jacobian
    losses = [float(v) for v in re.findall(r"after +\d+ iterations: (\S+)", "\n".join(lines))]
    assert len(losses) == 2 and losses[-1] < losses[0] / 4  # 200 steps of Descent(0.01)


def test_pinn_rolling_mean_loss_falls_with_second_derivatives_in_the_compiled_loss():
    out = _run("PINN2DPDE")
    rows = [_numbers(line) for line in out.splitlines() if line.startswith("Iteration")]
    # each row: loss (mean), physics (mean), data (mean), bc (mean)
    assert len(rows) == 6  # iterations 1, 51, ..., 251
    first, last = rows[1], rows[-1]  # the rolling means need 32 steps to fill
    assert last[1] < first[1] / 2, out
    assert last[3] < first[3], out  # the physics residual's mean falls too


def test_real_nvp_log_likelihood_improves():
    out = _run("RealNVP")
    # 6 coupling MLPs: Dense(2=>16) 48, 3 × Dense(16=>16) 272, Dense(16=>4) 68 → 932 each
    assert "Total Trainable Parameters: 5592" in out
    losses = [float(v) for v in re.findall(r"Training Loss: (\S+)", out)]
    assert len(losses) == 4  # iterations 1, 100, 200, 300
    assert losses[-1] < losses[0] - 1.0  # negative log-likelihood per point, in nats
