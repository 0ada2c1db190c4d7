"""Lux.jl's tutorial "Training a PINN on 2D PDE" (``examples/PINN2DPDE/main.jl`` at 6f4b96c),
in luxc: u(x, y, t) with ∂u/∂t = ∂²u/∂x² + ∂²u/∂y² on [0, 2]³, the analytic solution
exp(x + y)·cos(x + y + 4t) on a 16³ grid and 5 × 512 boundary points, an MLP of three
``Dense(·, 128, tanh)`` layers, Adam(0.005) with ``adjust`` to 5e-4 at iteration 5,000 and
5e-5 at 10,000, batches of 128 shuffled without a partial last batch, 50,000 iterations. The
second derivatives are taken inside the loss that AutoXLA compiles (nested AD: reverse over
reverse, as Lux's Enzyme calls). Printed: the loss of the step and, in brackets, the mean of
the last 32 (Lux's ``CircBuff(Float32, 32)``). numpy's generator stands in for Julia's.

Run it:  python examples/lux/PINN2DPDE.py [--quick]
"""

from __future__ import annotations

import argparse
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn
from luxc.training import adjust_, single_train_step_


def pinn(hidden_dims: int = 32) -> nn.Chain:
    return nn.Chain(nn.Dense(3, hidden_dims, jnp.tanh), nn.Dense(hidden_dims, hidden_dims, jnp.tanh),
                    nn.Dense(hidden_dims, hidden_dims, jnp.tanh), nn.Dense(hidden_dims, 1))


def _gradient(f, xyt):  # Enzyme.gradient(Reverse, sum ∘ f, xyt), xyt batch-first (batch, 3)
    return jax.grad(lambda z: jnp.sum(f(z)))(xyt)


def du_dt(model, xyt):
    return _gradient(model, xyt)[:, 2]


def d2u_dx2(model, xyt):
    return _gradient(lambda z: _gradient(model, z)[:, 0], xyt)[:, 0]


def d2u_dy2(model, xyt):
    return _gradient(lambda z: _gradient(model, z)[:, 1], xyt)[:, 1]


def physics_informed_loss_function(model, xyt):
    return jnp.mean(jnp.square(du_dt(model, xyt) - d2u_dx2(model, xyt) - d2u_dy2(model, xyt)))


def mse_loss_function(model, target, xyt):
    return luxc.MSELoss()(model(xyt), target)


def loss_function(model, ps, st, data):
    xyt, target_data, xyt_bc, target_bc = data
    smodel = luxc.StatefulLuxLayer(model, ps, st)
    physics_loss = physics_informed_loss_function(smodel, xyt)
    data_loss = mse_loss_function(smodel, target_data, xyt)
    bc_loss = mse_loss_function(smodel, target_bc, xyt_bc)
    stats = {"physics_loss": physics_loss, "data_loss": data_loss, "bc_loss": bc_loss}
    return physics_loss + data_loss + bc_loss, smodel.st, stats


def analytical_solution(xyt: np.ndarray) -> np.ndarray:
    x, y, t = xyt[:, 0], xyt[:, 1], xyt[:, 2]
    return np.exp(x + y) * np.cos(x + y + 4 * t)


def generate_data() -> tuple[np.ndarray, ...]:
    """Lux's grid (16³ points, x varying fastest), boundary points and min-max scaling."""
    grid = np.linspace(0, 2, 16, dtype=np.float32)
    xyt = np.array([(x, y, t) for t in grid for y in grid for x in grid], np.float32)
    target_data = analytical_solution(xyt)[:, None]
    n = 512
    s = np.linspace(0, 2, n, dtype=np.float32)
    zeros, twos = np.zeros(n, np.float32), np.full(n, 2, np.float32)
    xyt_bc = np.concatenate([np.stack(c, 1) for c in [
        (s, s, zeros), (zeros, s, s), (twos, s, s), (s, zeros, s), (s, twos, s)]])
    target_bc = analytical_solution(xyt_bc)[:, None]
    lo = min(target_data.min(), target_bc.min())
    hi = max(target_data.max(), target_bc.max())
    scale = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
    return (scale(xyt), (target_data - lo) / (hi - lo), scale(xyt_bc), (target_bc - lo) / (hi - lo))


def dataloader(rng: np.random.Generator, arrays: tuple[np.ndarray, ...], batchsize: int):
    """MLUtils' ``DataLoader(...; shuffle=true, partial=false)``, cycled: a new order every
    pass, the incomplete last batch dropped."""
    n = len(arrays[0])
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batchsize + 1, batchsize):
            idx = order[start:start + batchsize]
            yield tuple(a[idx] for a in arrays)


def lr(i: int) -> float:
    return 0.005 if i < 5000 else (0.0005 if i < 10000 else 0.00005)


def train_model(xyt, target_data, xyt_bc, target_bc, *, seed: int = 0, maxiters: int = 50_000,
                hidden_dims: int = 128, print_every: int = 1000) -> list[float]:
    rng = np.random.default_rng(seed)
    model = pinn(hidden_dims)
    ps, st = luxc.setup(jax.random.key(seed), model)
    pde = dataloader(rng, (xyt, target_data), 128)
    bc = dataloader(rng, (xyt_bc, target_bc), 128)
    train_state = luxc.TrainState(model, ps, st, optax.adam(0.005))
    trackers = {k: deque(maxlen=32) for k in ("loss", "physics_loss", "data_loss", "bc_loss")}
    means = []
    for it, ((xyt_b, target_b), (xyt_bc_b, target_bc_b)) in enumerate(zip(pde, bc), start=1):
        adjust_(train_state, lr(it))
        _, loss, stats, train_state = single_train_step_(
            luxc.AutoEnzyme(), loss_function, (xyt_b, target_b, xyt_bc_b, target_bc_b),
            train_state, return_gradients=False)
        values = {"loss": float(loss), **{k: float(v) for k, v in stats.items()}}
        for k, v in values.items():
            trackers[k].append(v)
        mean = {k: float(np.mean(trackers[k])) for k in trackers}
        means.append(mean["loss"])
        if np.isnan(values["loss"]):
            raise ValueError("NaN Loss Detected")
        if it % print_every == 1 or it == maxiters:
            print(f"Iteration: [{it:6d}/{maxiters:6d}] \t Loss: {values['loss']:.9f} "
                  f"({mean['loss']:.9f}) \t Physics Loss: {values['physics_loss']:.9f} "
                  f"({mean['physics_loss']:.9f}) \t Data Loss: {values['data_loss']:.9f} "
                  f"({mean['data_loss']:.9f}) \t BC Loss: {values['bc_loss']:.9f} "
                  f"({mean['bc_loss']:.9f})")
        if it + 1 >= maxiters:  # Lux: `iter += 1; iter ≥ maxiters && break`
            break
    return means


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="300 iterations (the trend only), printing every 50")
    quick = parser.parse_args().quick
    train_model(*generate_data(), maxiters=300 if quick else 50_000,
                print_every=50 if quick else 1000)
