"""Lux.jl's tutorial "Training a Simple LSTM" (``examples/SimpleRNN/main.jl`` at 6f4b96c), in luxc:
classify 1000 noisy spirals (MLUtils' ``make_spiral``, rebuilt in numpy) as clockwise or
anticlockwise with an ``LSTMCell(2 => 8)`` run over the 50 time steps by hand and a
``Dense(8 => 1, sigmoid)`` head; Adam(0.01), BinaryCrossEntropyLoss, 25 epochs of batches of 128,
compiled training steps (AutoXLA) and a compiled forward pass for validation. The model is written
twice, as a container layer and with ``@compact``, and both are trained.

Sequences are batch-first, ``(batch, time, features)`` = ``(N, 50, 2)``, where Lux's are
``(2, 50, N)``. numpy's generator and jax's keys stand in for Julia's default RNG, so the printed
digits differ from Lux's run.

Run it:  python examples/lux/SimpleRNN.py [--quick]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import numpy as np
import optax
from _dataloader import data_loader  # MLUtils' DataLoader, beside this file

import luxc
from luxc import nn, ops
from luxc.training import single_train_step_


def make_spiral(rng: np.random.Generator, n: int = 97, a: float = 6.5, theta: float = 16.0,
                b: float = 104.0, noise: float = 0.1) -> np.ndarray:
    r"""MLUtils' ``make_spiral(n)``: two interleaved spirals of ``n`` points each, ``(2n, 2)``.

    Point :math:`i = 0..n-1` of the first spiral is :math:`r_i(\sin\phi_i, \cos\phi_i)` with
    :math:`\phi_i = i\pi/\theta`, :math:`r_i = a(b - i)/b`; the second spiral is its mirror
    image :math:`-(x, y)`; every coordinate gets :math:`\mathcal N(0, \mathrm{noise}^2)` noise.
    Rows ``0..n-1`` run along the first spiral, rows ``n..2n-1`` along the second.
    """
    i = np.arange(n, dtype=np.float64)
    radius = a * (b - i) / b
    first = np.stack([radius * np.sin(i * np.pi / theta), radius * np.cos(i * np.pi / theta)], 1)
    points = np.concatenate([first, -first])
    return points + noise * rng.standard_normal(points.shape)


def create_dataset(rng: np.random.Generator, dataset_size: int = 1000,
                   sequence_length: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``x (dataset_size, sequence_length, 2)`` float32 and labels ``(dataset_size,)``: the
    first half are the first spiral of a ``make_spiral`` (label 0), the second half the second
    (label 1), as Lux's ``create_dataset``."""
    half = dataset_size // 2
    spirals = [make_spiral(rng, sequence_length) for _ in range(dataset_size)]
    first = [s[:sequence_length] for s in spirals[:half]]
    second = [s[sequence_length:] for s in spirals[half:]]
    x = np.stack(first + second).astype(np.float32)
    labels = np.concatenate([np.zeros(half), np.ones(dataset_size - half)]).astype(np.float32)
    return x, labels


class SpiralClassifier(nn.AbstractContainerLayer):
    """Lux's ``SpiralClassifier <: AbstractLuxContainerLayer{(:lstm_cell, :classifier)}``:
    an LSTM cell stepped over the sequence by hand, then a classifier on the last output.

    ``x (batch, time, in_dims)`` → probabilities ``(batch,)``.
    """

    def __init__(self, in_dims: int, hidden_dims: int, out_dims: int) -> None:
        self.lstm_cell = nn.LSTMCell(in_dims, hidden_dims)
        self.classifier = nn.Dense(hidden_dims, out_dims, jax.nn.sigmoid)

    def sublayers(self) -> dict[str, nn.AbstractLayer]:
        return {"lstm_cell": self.lstm_cell, "classifier": self.classifier}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        # Lux's `eachslice(x, Val(2))` on (features, time, batch): the time axis, here axis 1
        x_init, *x_rest = ops.eachslice(x, 1)
        (y, carry), st_lstm = self.lstm_cell(x_init, ps["lstm_cell"], st["lstm_cell"])
        for x_t in x_rest:
            (y, carry), st_lstm = self.lstm_cell((x_t, carry), ps["lstm_cell"], st_lstm)
        y, st_classifier = self.classifier(y, ps["classifier"], st["classifier"])
        return y[:, 0], {**st, "classifier": st_classifier, "lstm_cell": st_lstm}


def spiral_classifier_compact(in_dims: int, hidden_dims: int, out_dims: int) -> nn.AbstractLayer:
    """The same model with ``@compact``: sub-layers are called as ``self.lstm_cell(x)``."""

    @luxc.compact(lstm_cell=nn.LSTMCell(in_dims, hidden_dims),
                  classifier=nn.Dense(hidden_dims, out_dims, jax.nn.sigmoid))
    def spiral_classifier(self, x):
        x_init, *x_rest = ops.eachslice(x, 1)
        y, carry = self.lstm_cell(x_init)
        for x_t in x_rest:
            y, carry = self.lstm_cell((x_t, carry))
        return self.classifier(y)[:, 0]

    return spiral_classifier


lossfn = luxc.BinaryCrossEntropyLoss()


def accuracy(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """The share of ``y_pred > 0.5`` that equals the label."""
    return float(np.mean((np.asarray(y_pred) > 0.5) == np.asarray(y_true)))


def train(model: nn.AbstractLayer, data: tuple, epochs: int, seed: int) -> list[dict]:
    """Lux's ``main(model_type)``: one line of training loss and one of validation loss and
    accuracy per epoch; returns them as records."""
    (x_train, y_train), (x_val, y_val) = data
    rng = np.random.default_rng(seed)
    ps, st = luxc.setup(jax.random.key(seed), model)
    train_state = luxc.TrainState(model, ps, st, optax.adam(0.01))
    model_compiled = jax.jit(lambda x, ps, st: model(x, ps, st))
    ad = luxc.AutoXLA()
    history = []
    for epoch in range(1, epochs + 1):
        total_loss, total_samples = 0.0, 0
        for x, y in data_loader((x_train, y_train), 128, rng):
            _, loss, _, train_state = single_train_step_(ad, lossfn, (x, y), train_state)
            total_loss += float(loss) * len(y)
            total_samples += len(y)
        train_loss = total_loss / total_samples
        print(f"Epoch [{epoch:3d}]: Loss {train_loss:4.5f}")

        total_acc, total_loss, total_samples = 0.0, 0.0, 0
        st_ = luxc.testmode(train_state.states)
        for x, y in data_loader((x_val, y_val), 128, None):
            y_hat, st_ = model_compiled(x, train_state.parameters, st_)
            total_acc += accuracy(y_hat, y) * len(y)
            total_loss += float(lossfn(y_hat, y)) * len(y)
            total_samples += len(y)
        val_loss, val_acc = total_loss / total_samples, total_acc / total_samples
        print(f"Validation:\tLoss {val_loss:4.5f}\tAccuracy {val_acc:4.5f}")
        history.append({"loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc})
    return history


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="sequences of 10 steps and 4 epochs instead of 50 and 25")
    args = parser.parse_args(argv)
    sequence_length, epochs = (10, 4) if args.quick else (50, 25)
    rng = np.random.default_rng(0)
    x, labels = create_dataset(rng, sequence_length=sequence_length)
    # MLUtils' splitobs(...; at=0.8, shuffle=true)
    order = rng.permutation(len(x))
    cut = int(0.8 * len(x))
    data = ((x[order[:cut]], labels[order[:cut]]), (x[order[cut:]], labels[order[cut:]]))
    results = {}
    for name, build in (("SpiralClassifier", SpiralClassifier),
                        ("SpiralClassifierCompact", spiral_classifier_compact)):
        print(name)
        results[name] = train(build(2, 8, 1), data, epochs, seed=1)
    return results


if __name__ == "__main__":
    main()
