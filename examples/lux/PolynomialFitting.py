"""Lux.jl's tutorial "Fitting a Polynomial using MLP" (``examples/PolynomialFitting/main.jl`` at
6f4b96c), in luxc: 128 noisy points of y = x² - 2x, ``Chain(Dense(1 => 16, relu),
Dense(16 => 1))``, Adam(0.03), MSELoss, 250 compiled training steps, then a compiled forward
pass. numpy's generator (seed 12345) stands in for Julia's MersenneTwister, so the noise, the
initial parameters and the printed losses differ from Lux's run in their digits.

Run it:  python examples/lux/PolynomialFitting.py [--quick] [--plot FILE.png]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn
from luxc.training import single_train_step_


def generate_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """128 points of y = x² - 2x on [-2, 2] plus N(0, 0.1²) noise, batch-first ``(128, 1)``."""
    x = np.linspace(-2.0, 2.0, 128, dtype=np.float32).reshape(128, 1)
    y = np.polynomial.polynomial.polyval(x, (0, -2, 1)).astype(np.float32)
    y += rng.standard_normal((128, 1), dtype=np.float32) * np.float32(0.1)
    return x, y


def main(tstate: luxc.TrainState, vjp, data, epochs: int) -> luxc.TrainState:
    for epoch in range(1, epochs + 1):
        _, loss, _, tstate = single_train_step_(vjp, luxc.MSELoss(), data, tstate)
        if epoch % 50 == 1 or epoch == epochs:
            print(f"Epoch: {epoch:3d} \t Loss: {float(loss):.5g}")
    return tstate


def run(epochs: int = 250, plot: str | None = None) -> float:
    rng = np.random.default_rng(12345)
    x, y = generate_data(rng)
    model = nn.Chain(nn.Dense(1, 16, jax.nn.relu), nn.Dense(16, 1))
    ps, st = luxc.setup(jax.random.key(12345), model)
    tstate = luxc.TrainState(model, ps, st, optax.adam(0.03))
    tstate = main(tstate, luxc.AutoEnzyme(), (jnp.asarray(x), jnp.asarray(y)), epochs)

    # Lux: `@compile Lux.apply(model, x, ps, Lux.testmode(st))`
    forward_pass = jax.jit(lambda x, ps, st: tstate.model(x, ps, st)[0])
    y_pred = np.asarray(forward_pass(x, tstate.parameters, luxc.testmode(tstate.states)))
    if plot:
        import matplotlib.pyplot as plt

        plt.plot(x[:, 0], x[:, 0] ** 2 - 2 * x[:, 0], label="True Quadratic Function")
        plt.scatter(x[:, 0], y[:, 0], s=12, alpha=0.5, label="Actual Data")
        plt.scatter(x[:, 0], y_pred[:, 0], s=12, alpha=0.5, label="Predictions")
        plt.legend()
        plt.savefig(plot)
    return float(np.mean((y_pred - y) ** 2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 epochs instead of 250")
    parser.add_argument("--plot", help="save the data and the predictions to this image")
    args = parser.parse_args()
    mse = run(60 if args.quick else 250, args.plot)
    print(f"Final MSE of the compiled forward pass: {mse:.5g}")
