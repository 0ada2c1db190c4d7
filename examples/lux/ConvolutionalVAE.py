"""Lux.jl's tutorial "Convolutional VAE for MNIST" (``examples/ConvolutionalVAE/main.jl`` at
6f4b96c), in luxc: an encoder (three stride-2 ``Conv`` + ``BatchNorm(leakyrelu)`` blocks, two
Dense projections to the mean and log-variance of 8 latent dimensions, a reparameterised sample
drawn inside the forward pass) and a decoder (Dense, three ``Upsample(2)`` + ``Conv`` blocks, a
sigmoid image); loss = summed squared reconstruction error + KL divergence (the negative ELBO);
AdamW(1e-3, weight decay 1e-5), batches of 128 images of 64×64, 50 epochs, compiled steps
(AutoXLA) without gradients; then reconstructions and generated samples, saved as one image with
``--plot FILE`` when matplotlib is installed.

Data: scikit-learn's ``load_digits`` (1797 images of 8×8, each pixel repeated 8×8 to 64×64)
instead of MNIST resized to 64×64 (no download here), so an epoch is 14 steps instead of 468.
The encoder's ``rng`` advances on every call (fresh noise per step); Lux's ``replicate(rng)``
leaves its state's rng unchanged, so its every step draws the same noise for a given batch shape.

Run it:  python examples/lux/ConvolutionalVAE.py [--quick] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _dataloader import data_loader  # MLUtils' DataLoader, beside this file

import luxc
from luxc import nn
from luxc.training import single_train_step_


def zeros32(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Lux's ``zeros32`` initialiser."""
    return jnp.zeros(shape, dtype)


def _down(in_chs: int, out_chs: int) -> nn.Chain:
    return nn.Chain(nn.Conv((3, 3), in_chs, out_chs, stride=2, pad=1),
                    nn.BatchNorm(out_chs, jax.nn.leaky_relu))


def cvae_encoder(*, num_latent_dims: int, image_shape: tuple[int, int, int],
                 max_num_filters: int) -> nn.AbstractLayer:
    r"""``x (N, H, W, C)`` → ``(z, μ, log σ²)``, each ``(N, num_latent_dims)``:
    :math:`\log\sigma^2` clamped to [-20, 10], :math:`z = \mu + \epsilon\,\sigma`,
    :math:`\epsilon \sim \mathcal N(0, I)` from the state's ``rng``, which advances."""
    flattened_dim = (image_shape[0] // 8) * (image_shape[1] // 8) * max_num_filters
    f = max_num_filters

    @luxc.compact(
        embed=nn.Chain(_down(image_shape[2], f // 4), _down(f // 4, f // 2), _down(f // 2, f),
                       nn.FlattenLayer()),
        proj_mu=nn.Dense(flattened_dim, num_latent_dims, init_bias=zeros32),
        proj_log_var=nn.Dense(flattened_dim, num_latent_dims, init_bias=zeros32),
        rng=luxc.init_fn(jax.random.key_data, "state"),
    )
    def encoder(self, x):
        y = self.embed(x)
        mu = self.proj_mu(y)
        log_var = jnp.clip(self.proj_log_var(y), -20.0, 10.0)
        sigma = jnp.exp(log_var * 0.5)
        key, sub = jax.random.split(jax.random.wrap_key_data(self.rng))
        self.rng = jax.random.key_data(key)
        # reparameterisation: the sample is differentiable in μ and σ
        z = jax.random.normal(sub, sigma.shape, sigma.dtype) * sigma + mu
        return z, mu, log_var

    return encoder


def _up(in_chs: int, out_chs: int, activation=None, norm: bool = True) -> nn.Chain:
    layers = [nn.Upsample(scale=2), nn.Conv((3, 3), in_chs, out_chs, activation, pad=1)]
    return nn.Chain(*layers, *([nn.BatchNorm(out_chs, jax.nn.leaky_relu)] if norm else []))


def cvae_decoder(*, num_latent_dims: int, image_shape: tuple[int, int, int],
                 max_num_filters: int) -> nn.AbstractLayer:
    """``z (N, num_latent_dims)`` → images ``(N, H, W, C)`` in (0, 1)."""
    h, w = image_shape[0] // 8, image_shape[1] // 8
    f = max_num_filters

    @luxc.compact(
        linear=nn.Dense(num_latent_dims, h * w * f),
        upchain=nn.Chain(_up(f, f // 2), _up(f // 2, f // 4),
                         _up(f // 4, image_shape[2], jax.nn.sigmoid, norm=False)),
        max_num_filters=max_num_filters,
    )
    def decoder(self, x):
        y = self.linear(x)
        return self.upchain(y.reshape(y.shape[0], h, w, self.max_num_filters))

    return decoder


class CVAE(nn.AbstractContainerLayer):
    """``x (N, H, W, C)`` → ``(x_rec, μ, log σ²)``: encode, sample, decode."""

    def __init__(self, *, num_latent_dims: int, image_shape: tuple[int, int, int],
                 max_num_filters: int) -> None:
        kw = {"num_latent_dims": num_latent_dims, "image_shape": image_shape,
              "max_num_filters": max_num_filters}
        self.encoder, self.decoder = cvae_encoder(**kw), cvae_decoder(**kw)

    def sublayers(self) -> dict[str, nn.AbstractLayer]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[tuple, dict]:
        (z, mu, log_var), st_enc = self.encoder(x, ps["encoder"], st["encoder"])
        x_rec, st_dec = self.decoder(z, ps["decoder"], st["decoder"])
        return (x_rec, mu, log_var), {"encoder": st_enc, "decoder": st_dec}


def decode(cvae: CVAE, z: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
    x_rec, st_dec = cvae.decoder(z, ps["decoder"], st["decoder"])
    return x_rec, {**st, "decoder": st_dec}


def loss_function(model: CVAE, ps: dict, st: dict, x: jax.Array) -> tuple:
    r"""The negative ELBO: :math:`\sum(\hat x - x)^2 - \tfrac12\sum(1 + \log\sigma^2 - \mu^2
    - \sigma^2)`, summed over the batch."""
    (y, mu, log_var), st = model(x, ps, st)
    reconstruction_loss = luxc.MSELoss(agg="sum")(y, x)
    kldiv_loss = -jnp.sum(1 + log_var - mu**2 - jnp.exp(log_var)) / 2
    stats = {"y": y, "mu": mu, "log_var": log_var, "reconstruction_loss": reconstruction_loss,
             "kldiv_loss": kldiv_loss}
    return reconstruction_loss + kldiv_loss, st, stats


def load_digits_images(image_size: int) -> np.ndarray:
    """The 1797 digits as ``(N, image_size, image_size, 1)`` float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    images = np.kron(images, np.ones((image_size // 8, image_size // 8)))
    return images[..., None].astype(np.float32)


def image_grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``rows × cols`` images ``(N, H, W, 1)`` tiled row by row into one ``(rows·H, cols·W)``."""
    n, h, w = images.shape[:3]
    tiles = np.asarray(images[:rows * cols, ..., 0]).reshape(rows, cols, h, w)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def train(*, batchsize: int = 128, image_size: int = 64, num_latent_dims: int = 8,
          max_num_filters: int = 64, seed: int = 0, epochs: int = 50,
          weight_decay: float = 1e-5, learning_rate: float = 1e-3,
          plot: str | None = None) -> list[float]:
    """Lux's ``main``: prints the parameter count, the loss every 250 steps and at an epoch's
    end, one line per epoch; returns the epochs' mean training losses."""
    rng = np.random.default_rng(seed)
    cvae = CVAE(num_latent_dims=num_latent_dims, image_shape=(image_size, image_size, 1),
                max_num_filters=max_num_filters)
    ps, st = luxc.setup(jax.random.key(seed), cvae)
    images = load_digits_images(image_size)
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
    train_state = luxc.TrainState(cvae, ps, st, opt)
    print(f"Total Trainable Parameters: {luxc.parameter_count(cvae) / 1e6:0.4f} M")

    n_batches, losses = len(images) // batchsize, []
    for epoch in range(1, epochs + 1):
        loss_total, total_samples, start_time = 0.0, 0, time.perf_counter()
        for i, (x,) in enumerate(data_loader((images,), batchsize, rng), start=1):
            _, loss, _, train_state = single_train_step_(
                luxc.AutoXLA(), loss_function, x, train_state, return_gradients=False)
            loss_total += float(loss)
            total_samples += len(x)
            if i % 250 == 0 or i == n_batches:
                throughput = total_samples / (time.perf_counter() - start_time)
                print(f"Epoch {epoch}, Iter {i}, Loss: {float(loss):.7f}, "
                      f"Throughput: {throughput:.6f} im/s")
        total_time = time.perf_counter() - start_time
        losses.append(loss_total / n_batches)
        print(f"Epoch {epoch}, Train Loss: {losses[-1]:.7f}, Time: {total_time:.4f}s, "
              f"Throughput: {total_samples / total_time:.6f} im/s")

    test_st = luxc.testmode(train_state.states)
    (recon, _, _), _ = jax.jit(cvae)(jnp.asarray(images[:batchsize]), train_state.parameters,
                                     test_st)
    z = jax.random.normal(jax.random.key(seed + 1), (batchsize, num_latent_dims))
    generated, _ = jax.jit(decode, static_argnums=0)(cvae, z, train_state.parameters, test_st)
    picture = np.vstack([image_grid(recon, 8, batchsize // 8), np.zeros((image_size, 16 * image_size)),
                         image_grid(generated, 8, batchsize // 8)])
    _save(picture, plot)
    return losses


def _save(picture: np.ndarray, plot: str | None) -> None:
    if plot is None:
        return
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no picture written")
        return
    plt.imsave(plot, picture, cmap="gray", vmin=0.0, vmax=1.0)
    print(f"Reconstructions (top) and samples (bottom) written to {plot}")


def main(argv: Sequence[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 epochs of 16×16 images instead of 50 of 64×64")
    parser.add_argument("--plot", help="save reconstructions and generated samples to this image")
    args = parser.parse_args(argv)
    if args.quick:
        return train(epochs=3, image_size=16, plot=args.plot)
    return train(plot=args.plot)


if __name__ == "__main__":
    main()
