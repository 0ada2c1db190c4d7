"""Lux.jl's CIFAR-10 scripts (``examples/CIFAR10/{common,simple_cnn,resnet20,conv_mixer}.jl`` at
6f4b96c), in luxc: ``SimpleCNN`` (four stride-2 Conv + BatchNorm), ``ResNet20`` (``Parallel(+,
NoOpLayer() or a Conv, two ConvBN)`` blocks with ``SamePad``) and ``ConvMixer`` (grouped depthwise
``Conv`` with ``SamePad`` in a ``SkipConnection``, 1×1 Conv, ``GlobalMeanPool``); AdamW (optionally
after ``ClipNorm``), logit CrossEntropyLoss, compiled steps (AutoXLA) without gradients; ConvMixer
``adjust``s the learning rate every step along Lux's piecewise-linear schedule (one program: the
rate is a device scalar); ``--bfloat16`` trains in BFloat16 as Lux's ``bf16(ps, st)``.

Data: scikit-learn's ``load_digits`` (8×8 grey, each pixel repeated 4×4 to 32×32, not repeated
with ``--quick``, and the channel 3 times, normalised per channel) instead of CIFAR-10 (no
download here): 1497 training and 300 test images, no random crop or flip (a flipped digit is
another digit).

Run it:  python examples/lux/CIFAR10.py simple_cnn|resnet20|conv_mixer [--epochs N] [--quick] ...
"""

from __future__ import annotations

import argparse
import operator
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _dataloader import data_loader  # MLUtils' DataLoader, beside this file

import luxc
from luxc import nn
from luxc.training import adjust_, single_train_step_


def load_digits_as_cifar(dtype: jnp.dtype, n_test: int = 300, seed: int = 0,
                         image_size: int = 32) -> tuple:
    """``((x_train, y_train), (x_test, y_test))``: images ``(N, image_size, image_size, 3)``
    (a multiple of 8) normalised with the training set's per-channel mean and std, one-hot
    labels ``(N, 10)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scale = np.ones((image_size // 8, image_size // 8))  # each pixel of the 8×8 repeated
    x = np.repeat(np.kron(digits.images / 16.0, scale)[..., None], 3, axis=-1)
    y = np.eye(10, dtype=np.float32)[digits.target]
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    mean, std = x[n_test:].mean((0, 1, 2)), x[n_test:].std((0, 1, 2))
    x = ((x - mean) / std).astype(np.float32)
    cast = lambda a: np.asarray(jnp.asarray(a, dtype))  # noqa: E731
    return (cast(x[n_test:]), y[n_test:]), (cast(x[:n_test]), y[:n_test])


def simple_cnn() -> nn.Chain:
    def conv(i: int, o: int) -> list:
        return [nn.Conv((3, 3), i, o, jax.nn.relu, stride=2, pad=1), nn.BatchNorm(o)]

    return nn.Chain(
        nn.Chain(*conv(3, 16), *conv(16, 32), *conv(32, 64), *conv(64, 128)),
        nn.GlobalMeanPool(), nn.FlattenLayer(),
        nn.Chain(nn.Dense(128, 64, jax.nn.relu), nn.BatchNorm(64), nn.Dense(64, 10)))


def conv_bn(kernel_size: tuple, in_chs: int, out_chs: int, act: Callable | None, **kw) -> nn.Chain:
    return nn.Chain(nn.Conv(kernel_size, in_chs, out_chs, act, **kw), nn.BatchNorm(out_chs))


def basic_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Chain:
    """``relu(connection(x) + ConvBN(ConvBN(x)))``; the connection is ``NoOpLayer()`` when the
    shape is kept, else a strided 3×3 Conv."""
    if stride == 1 and in_channels == out_channels:
        connection = nn.NoOpLayer()
    else:
        connection = nn.Conv((3, 3), in_channels, out_channels, stride=stride, pad=nn.SamePad())
    return nn.Chain(
        nn.Parallel(operator.add, connection, nn.Chain(
            conv_bn((3, 3), in_channels, out_channels, jax.nn.relu, stride=stride,
                    pad=nn.SamePad()),
            conv_bn((3, 3), out_channels, out_channels, None, pad=nn.SamePad()))),
        jax.nn.relu)


def resnet20(num_classes: int = 10) -> nn.Chain:
    layers = [nn.Chain(nn.Conv((3, 3), 3, 16, jax.nn.relu, pad=nn.SamePad()), nn.BatchNorm(16))]
    for in_channels, out_channels, num_blocks, stride in ((16, 16, 3, 1), (16, 32, 3, 2),
                                                          (32, 64, 3, 2)):
        for i in range(num_blocks):
            layers.append(basic_block(in_channels if i == 0 else out_channels, out_channels,
                                      stride=stride if i == 0 else 1))
    return nn.Chain(*layers, nn.GlobalMeanPool(), nn.FlattenLayer(), nn.Dense(64, num_classes))


def conv_mixer(*, dim: int, depth: int, kernel_size: int = 5, patch_size: int = 2) -> nn.Chain:
    def mixer() -> nn.Chain:
        depthwise = nn.Chain(nn.Conv((kernel_size, kernel_size), dim, dim, jax.nn.relu,
                                     groups=dim, pad=nn.SamePad()), nn.BatchNorm(dim))
        return nn.Chain(nn.SkipConnection(depthwise, operator.add),
                        nn.Conv((1, 1), dim, dim, jax.nn.relu), nn.BatchNorm(dim))

    return nn.Chain(
        nn.Conv((patch_size, patch_size), 3, dim, jax.nn.relu, stride=patch_size),
        nn.BatchNorm(dim), *[mixer() for _ in range(depth)],
        nn.GlobalMeanPool(), nn.FlattenLayer(), nn.Dense(dim, 10))


def clip_norm(omega: float = 10.0) -> optax.GradientTransformation:
    r"""Optimisers.jl's ``ClipNorm(ω)``: each array's gradient rescaled to 2-norm at most ω,
    :math:`g \min(1, \omega / \|g\|_2)` (per array, not global)."""
    def clip(updates, params=None):
        return jax.tree_util.tree_map(
            lambda g: g * jnp.minimum(1.0, omega / jnp.maximum(jnp.linalg.norm(g), 1e-30)),
            updates)

    return optax.stateless(clip)


def adamw(eta: float, weight_decay: float, clip: bool) -> optax.GradientTransformation:
    """``AdamW(; eta, lambda)`` (Optimisers.jl 0.4's coupled decay, as ``optax.adamw``),
    after ``ClipNorm()`` when ``clip``; the learning rate is adjustable."""
    def build(learning_rate):
        opt = optax.adamw(learning_rate, weight_decay=weight_decay)
        return optax.chain(clip_norm(), opt) if clip else opt

    return optax.inject_hyperparams(build)(learning_rate=eta)


def accuracy(model_compiled, ps: dict, st: dict, data: tuple, batchsize: int) -> float:
    correct = total = 0
    # Lux's test set (10,000) outnumbers a batch; the 300 test digits do not
    for x, y in data_loader(data, min(batchsize, len(data[0])), None):
        y_hat, _ = model_compiled(x, ps, st)
        correct += int(jnp.sum(jnp.argmax(y_hat, -1) == jnp.argmax(y, -1)))
        total += len(y)
    return correct / total


def train_model(model: nn.AbstractLayer, opt: optax.GradientTransformation,
                scheduler: Callable[[float], float] | None = None, *, batchsize: int = 512,
                seed: int = 1234, epochs: int = 25, bfloat16: bool = False,
                image_size: int = 32) -> tuple[list[tuple], luxc.TrainState]:
    """Lux's ``train_model``: one table row per epoch (learning rate, train and test accuracy
    in percent, seconds); returns the rows and the trained state."""
    prec, dtype = (luxc.bf16, jnp.bfloat16) if bfloat16 else (luxc.f32, jnp.float32)
    print(f"[Info] Using {'BFloat16' if bfloat16 else 'Float32'} precision")
    rng = np.random.default_rng(seed)
    train_data, test_data = load_digits_as_cifar(dtype, image_size=image_size)
    ps, st = prec(luxc.setup(jax.random.key(seed), model))
    train_state = luxc.TrainState(model, ps, st, opt)
    print("[Info] Compiling model with XLA")
    x_ra = jnp.zeros((batchsize, *train_data[0].shape[1:]), dtype)
    model_compiled = jax.jit(model)
    model_compiled(x_ra, ps, luxc.testmode(st))
    print("[Info] Model compiled!")
    loss_fn = luxc.CrossEntropyLoss(logits=True)
    header = ["Epoch", "Learning Rate", "Train Accuracy (%)", "Test Accuracy (%)", "Time (s)"]
    print("[Info] Training model")
    print("|".join(f"{h:^24}" for h in header))
    steps, rows = len(train_data[0]) // batchsize, []
    for epoch in range(1, epochs + 1):
        stime, lr = time.perf_counter(), float("nan")
        for i, (x, y) in enumerate(data_loader(train_data, batchsize, rng), start=1):
            if scheduler is not None:
                lr = scheduler((epoch - 1) + (i + 1) / steps)
                train_state = adjust_(train_state, lr)
            _, loss, _, train_state = single_train_step_(
                luxc.AutoXLA(), loss_fn, (x, y), train_state, return_gradients=False)
            if np.isnan(float(loss)):
                raise FloatingPointError("NaN loss encountered!")
        ttime = time.perf_counter() - stime
        test_st = luxc.testmode(train_state.states)
        train_acc, test_acc = (accuracy(model_compiled, train_state.parameters, test_st, data,
                                        batchsize) * 100 for data in (train_data, test_data))
        rows.append((epoch, lr, train_acc, test_acc, ttime))
        print("|".join(f"{f % v:^24}" for f, v in zip(("%3d", "%.6f", "%.6f", "%.6f", "%.6f"),
                                                        rows[-1])))
    print("[Info] Finished training")
    return rows, train_state


def main(argv: Sequence[str] | None = None) -> tuple[list[tuple], luxc.TrainState]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("simple_cnn", "resnet20", "conv_mixer"))
    parser.add_argument("--batchsize", type=int, default=512)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--clip-norm", action="store_true")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--epochs", type=int, help="Lux's default: 50, 100, 25")
    parser.add_argument("--lr", type=float, help="(lr_max for conv_mixer) 0.003, 0.001, 0.05")
    parser.add_argument("--bfloat16", action="store_true")
    parser.add_argument("--hidden-dim", type=int, default=256, help="conv_mixer")
    parser.add_argument("--depth", type=int, default=8, help="conv_mixer")
    parser.add_argument("--patch-size", type=int, default=2, help="conv_mixer")
    parser.add_argument("--kernel-size", type=int, default=5, help="conv_mixer")
    parser.add_argument("--quick", action="store_true",
                        help="8×8 images, batches of 128, 3 epochs unless --epochs "
                             "(conv_mixer: dim 32, depth 2)")
    args = parser.parse_args(argv)
    epochs, lr = {"simple_cnn": (50, 0.003), "resnet20": (100, 0.001),
                  "conv_mixer": (25, 0.05)}[args.model]
    image_size = 32
    if args.quick:
        epochs, args.batchsize, args.hidden_dim, args.depth = 3, 128, 32, 2
        image_size = 8
    epochs, lr = args.epochs or epochs, args.lr or lr
    scheduler = None
    if args.model == "simple_cnn":
        model = simple_cnn()
    elif args.model == "resnet20":
        model = resnet20()
    else:
        model = conv_mixer(dim=args.hidden_dim, depth=args.depth, kernel_size=args.kernel_size,
                           patch_size=args.patch_size)
        knots = [0, epochs * 2 // 5, epochs * 4 // 5, epochs + 1]
        scheduler = lambda t: float(np.interp(t, knots, [0, lr, lr / 20, 0]))  # noqa: E731
    opt = adamw(lr, args.weight_decay, args.clip_norm)
    return train_model(model, opt, scheduler, batchsize=args.batchsize, seed=args.seed,
                       epochs=epochs, bfloat16=args.bfloat16, image_size=image_size)


if __name__ == "__main__":
    main()
