"""Lux.jl's tutorial "Julia & Lux for the Uninitiated" (``examples/Basics/main.jl`` at
6f4b96c), the parts that map to luxc: gradients by reverse and forward mode, Lux's
``jacobian_vector_product`` / ``vector_jacobian_product`` with its AD backends, and linear
regression with ``Dense(10 => 5)``, ``Descent(0.01)`` (``optax.sgd(0.01)``) and MSELoss for
10,000 steps. The Julia-language parts (arrays, broadcasting, ``Lux.replicate``) have no luxc
counterpart. numpy's and jax's generators stand in for Julia's, so the random values differ.

Run it:  python examples/lux/Basics.py [--quick]
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


def automatic_differentiation(rng: np.random.Generator) -> None:
    def f(x):
        return x @ x / 2

    def grad_f(x):  # ∇f(x) = x
        return x

    v = jnp.asarray(rng.standard_normal(4, dtype=np.float32))
    print("Actual Gradient: ", grad_f(v))
    print("Computed Gradient via Reverse Mode AD (jax.grad): ", jax.grad(f)(v))
    print("Computed Gradient via Forward Mode AD (jax.jacfwd): ", jax.jacfwd(f)(v))


def products(rng: np.random.Generator) -> None:
    def f(x):
        return x * x / 2

    x = jnp.asarray(rng.standard_normal(5, dtype=np.float32))
    v = jnp.ones(5, jnp.float32)
    print("JVP: ", luxc.jacobian_vector_product(f, luxc.AutoForwardDiff(), x, v))
    print("VJP: ", luxc.vector_jacobian_product(f, luxc.AutoZygote(), x, v))


def linear_regression(rng: np.random.Generator, nepochs: int) -> float:
    model = nn.Dense(10, 5)
    ps, st = luxc.setup(jax.random.key(0), model)
    n_samples, x_dim, y_dim = 20, 10, 5
    w = rng.standard_normal((y_dim, x_dim), dtype=np.float32)
    b = rng.standard_normal(y_dim, dtype=np.float32)
    x_samples = rng.standard_normal((n_samples, x_dim), dtype=np.float32)  # batch-first
    noise = 0.01 * rng.standard_normal((n_samples, y_dim), dtype=np.float32)
    y_samples = x_samples @ w.T + b + noise
    print(f"x shape: {x_samples.shape}; y shape: {y_samples.shape}")

    lossfn = luxc.MSELoss()
    print("Loss Value with ground true parameters: ", float(lossfn(x_samples @ w.T + b, y_samples)))

    tstate = luxc.TrainState(model, ps, st, optax.sgd(0.01))
    data = (jnp.asarray(x_samples), jnp.asarray(y_samples))
    for i in range(1, nepochs + 1):
        _, loss, _, tstate = single_train_step_(luxc.AutoZygote(), lossfn, data, tstate)
        if i == 1 or i % 1000 == 0 or i == nepochs:
            print(f"Loss Value after {i:6d} iterations: {float(loss):.8f}")
    final = float(lossfn(tstate.model(data[0], tstate.parameters, tstate.states)[0], data[1]))
    print("Loss Value after training: ", final)
    return final


def run(nepochs: int = 10_000) -> float:
    rng = np.random.default_rng(0)
    automatic_differentiation(rng)
    products(rng)
    return linear_regression(rng, nepochs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 iterations, not 10,000")
    run(200 if parser.parse_args().quick else 10_000)
