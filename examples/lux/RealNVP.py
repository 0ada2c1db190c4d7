"""Lux.jl's tutorial "Normalizing Flows for Density Estimation" (``examples/RealNVP/main.jl`` at
6f4b96c), in luxc: a RealNVP of 6 masked affine couplings, each conditioned by an MLP
(``Dense(2 => 16, gelu)``, two more ``Dense(16 => 16, gelu)``, ``Dense(16 => 4)``), trained by
maximum likelihood (the loss is the mean negative log-likelihood) on 100,000 two-moons points
(noise 0.06), batches of 128, Adam(4e-4), 10,000 compiled steps; then samples drawn through 1
to 6 couplings. The moons are Lux's own generator (written out below in numpy: the outer moon
lifted by 1, the inner one lowered by 1), not scikit-learn's ``make_moons``, which places them
differently; numpy's generator stands in for Julia's. Seed 1, not Lux's 0: with seed 0 of
numpy and jax this flow diverges at iteration 252 (a sample's log-density overflows float32 to
-inf through six exponentiated log-scales), which Julia's draw for seed 0 does not do.

Run it:  python examples/lux/RealNVP.py [--quick] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn
from luxc.training import single_train_step_


def make_moons(rng: np.random.Generator, n_samples: int = 100, noise: float | None = None):
    """Lux's ``make_moons``: ``(n_samples, 2)`` float32, batch-first."""
    n_moons = n_samples // 2
    t_inner = rng.random(n_moons, dtype=np.float32) * np.float32(math.pi)
    t_outer = rng.random(n_moons, dtype=np.float32) * np.float32(math.pi)
    outer = np.stack([np.cos(t_outer), np.sin(t_outer) + 1], 1)
    inner = np.stack([1 - np.cos(t_inner), 1 - np.sin(t_inner) - 1], 1)
    z = np.concatenate([outer, inner]).astype(np.float32)
    if noise is not None:
        z += np.float32(noise) * rng.standard_normal(z.shape, dtype=np.float32)
    return z


def moons_dataloader(rng: np.random.Generator, n: int, batchsize: int, noise: float):
    """MLUtils' ``DataLoader(make_moons(...); shuffle=true, partial=false)``, cycled."""
    z = make_moons(rng, n, noise)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batchsize + 1, batchsize):
            yield z[order[start:start + batchsize]]


def affine(params: jax.Array):
    """AffineBijector: the first half of the conditioner's output is the shift, the second the
    log-scale."""
    n = params.shape[-1] // 2
    return params[..., :n], params[..., n:]


def forward_and_log_det(mask, conditioner, x):
    shift, log_scale = affine(conditioner(x * (1 - mask)))
    y = x * jnp.exp(log_scale) + shift
    return jnp.where(mask, y, x), jnp.sum(log_scale * mask, axis=-1)


def inverse_and_log_det(mask, conditioner, y):
    shift, log_scale = affine(conditioner(y * (1 - mask)))
    x = (y - shift) / jnp.exp(log_scale)
    return jnp.where(mask, x, y), jnp.sum(-log_scale * mask, axis=-1)


def log_prob_normal(x):
    return -0.5 * math.log(2 * math.pi) - 0.5 * jnp.square(x)


def mlp(in_dims: int, hidden_dims: int, out_dims: int, n_layers: int, activation=jax.nn.gelu):
    return nn.Chain(nn.Dense(in_dims, hidden_dims, activation),
                    *[nn.Dense(hidden_dims, hidden_dims, activation) for _ in range(n_layers - 1)],
                    nn.Dense(hidden_dims, out_dims))


def real_nvp(*, n_transforms: int, dist_dims: int, hidden_dims: int, n_layers: int):
    """The flow as one layer: ``model(x)`` is log p(x) per row; ``model((z, nsteps))`` pushes
    base samples ``z`` through the first ``nsteps`` couplings."""
    masks = [jnp.arange(1, dist_dims + 1) % 2 == i % 2 for i in range(1, n_transforms + 1)]

    @luxc.compact(conditioners=[mlp(dist_dims, hidden_dims, 2 * dist_dims, n_layers)
                                for _ in range(n_transforms)],
                  mask_list=luxc.non_trainable(masks), name="RealNVP")
    def model(self, x):
        if isinstance(x, tuple):  # sampling
            z, nsteps = x
            for mask, conditioner in list(zip(self.mask_list, self.conditioners))[:nsteps]:
                z, _ = forward_and_log_det(mask, conditioner, z)
            return z
        lprob = jnp.zeros(x.shape[0], x.dtype)
        for mask, conditioner in reversed(list(zip(self.mask_list, self.conditioners))):
            x, log_det = inverse_and_log_det(mask, conditioner, x)
            lprob += log_det
        return lprob + jnp.sum(log_prob_normal(x), axis=-1)

    return model


def loss_function(model, ps, st, x):
    lprob, st = model(x, ps, st)
    return -jnp.mean(lprob), st, {}


def main(*, maxiters: int = 10_000, n_train_samples: int = 100_000, batchsize: int = 128,
         n_transforms: int = 6, hidden_dims: int = 16, n_layers: int = 4, lr: float = 0.0004,
         noise: float = 0.06, print_every: int = 1000, seed: int = 1):
    rng = np.random.default_rng(seed)
    dataloader = moons_dataloader(rng, n_train_samples, batchsize, noise)
    model = real_nvp(n_transforms=n_transforms, dist_dims=2, hidden_dims=hidden_dims,
                     n_layers=n_layers)
    ps, st = luxc.setup(jax.random.key(seed), model)
    train_state = luxc.TrainState(model, ps, st, optax.adam(lr))
    print(f"Total Trainable Parameters: {luxc.parameter_count(model)}")
    total_samples, start_time, losses = 0, time.time(), []
    for it, x in enumerate(dataloader, start=1):
        total_samples += x.shape[0]
        _, loss, _, train_state = single_train_step_(luxc.AutoEnzyme(), loss_function, x,
                                                     train_state, return_gradients=False)
        losses.append(float(loss))
        if math.isnan(losses[-1]):
            raise ValueError(f"NaN loss encountered in iter {it}!")
        if it == 1 or it == maxiters or it % print_every == 0:
            throughput = total_samples / (time.time() - start_time)
            print(f"Iter: [{it:6d}/{maxiters:6d}]\tTraining Loss: {losses[-1]:.6f}\t"
                  f"Throughput: {throughput:.6f} samples/s")
        if it >= maxiters:
            break
    return model, train_state.parameters, luxc.testmode(train_state.states), losses


def sample_stages(model, ps, st, n: int = 10_000) -> list[np.ndarray]:
    """Lux: ``@jit sample(rng, Float32, trained_model, 10_000, i)`` for i in 1:6."""
    z = jax.random.normal(jax.random.key(1), (n, 2))
    stages = []
    for i in range(1, len(ps["conditioners"]) + 1):
        sample = jax.jit(lambda z, ps, st, i=i: model((z, i), ps, st)[0])
        stages.append(np.asarray(sample(z, ps, st)))
    return stages


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 iterations, printing every 100")
    parser.add_argument("--plot", help="save the samples after 1..6 couplings to this image")
    args = parser.parse_args()
    model, ps, st, _ = main(maxiters=300 if args.quick else 10_000,
                            print_every=100 if args.quick else 1000)
    if args.plot:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 3, figsize=(12, 8))
        for idx, (ax, z) in enumerate(zip(axes.flat, sample_stages(model, ps, st)), start=1):
            ax.scatter(z[:, 0], z[:, 1], s=2)
            ax.set_title(f"{idx} transforms")
        fig.savefig(args.plot)
