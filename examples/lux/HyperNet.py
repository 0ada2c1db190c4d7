"""Lux.jl's tutorial "Training a HyperNetwork on MNIST and FashionMNIST" (``examples/HyperNet/main.jl``
at 6f4b96c), in luxc: a weight generator (``Embedding(2 => 32)``, two Dense layers) maps the
dataset's index to all 23,946 parameters of a small convolutional classifier (three stride-2
``Conv``, ``GlobalMeanPool``, ``FlattenLayer``, ``Dense(64 => 10)``), which then classifies the
images; Adam(3e-4), logit CrossEntropyLoss, 50 epochs alternating the two datasets, compiled steps
(AutoXLA, the dataset index a traced input as Lux's ``ConcreteRNumber``) without gradients.

Data: scikit-learn's ``load_digits`` (8×8, repeated 3× and zero-padded to 28×28) instead of MNIST,
and the same digits inverted (1 - x) with labels 9 - y instead of FashionMNIST (no download here).

Run it:  python examples/lux/HyperNet.py [--quick]
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
from jax.flatten_util import ravel_pytree

import luxc
from luxc import nn
from luxc.training import single_train_step_

NAMES = ("MNIST", "FashionMNIST")  # the roles the two digit datasets play


def load_datasets(rng: np.random.Generator, n_eval: int = 297) -> list[tuple]:
    """Two ``((x_train, y_train), (x_test, y_test))``: images ``(N, 28, 28, 1)`` in [0, 1],
    one-hot labels ``(N, 10)``; the digits, and the inverted digits labelled ``9 - y``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((3, 3)))  # (N, 24, 24)
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None].astype(np.float32)
    order = rng.permutation(len(images))
    datasets = []
    for x, labels in ((images, digits.target), (1.0 - images, 9 - digits.target)):
        x, y = x[order], np.eye(10, dtype=np.float32)[labels[order]]
        datasets.append(((x[n_eval:], y[n_eval:]), (x[:n_eval], y[:n_eval])))
    return datasets


class HyperNetLayer(nn.CompactLayer):
    """Lux's ``CompactLuxLayer{:HyperNet}`` with its own ``initialparameters``: only the weight
    generator has parameters; the core network's come from the generator on every call."""

    def init_parameters(self, key: jax.Array) -> dict:
        # `core_network` stays a key (the compact scope binds every sub-layer) with nothing in it
        return {"weight_generator": self.fields["weight_generator"].init_parameters(key),
                "core_network": {}}


def hyper_net(weight_generator: nn.AbstractLayer, core_network: nn.AbstractLayer) -> HyperNetLayer:
    """``(data_idx (), x (N, H, W, C))`` → ``core_network(x)`` with the parameters
    ``weight_generator(data_idx)`` (a vector of ``parameter_count(core_network)``), unflattened
    into the core network's parameter tree (Lux's ``ComponentArray(vec, ca_axes)``)."""
    _, ca_axes = ravel_pytree(core_network.init_parameters(jax.random.key(0)))

    def forward(self, inputs):
        x, y = inputs
        ps_new = self.ca_axes(self.weight_generator(x))
        return self.core_network(y, ps_new)

    fields = {"ca_axes": ca_axes, "weight_generator": weight_generator,
              "core_network": core_network}
    return HyperNetLayer(forward, fields, dispatch="HyperNet")


def create_model() -> HyperNetLayer:
    core_network = nn.Chain(
        nn.Conv((3, 3), 1, 16, jax.nn.relu, stride=2),
        nn.Conv((3, 3), 16, 32, jax.nn.relu, stride=2),
        nn.Conv((3, 3), 32, 64, jax.nn.relu, stride=2),
        nn.GlobalMeanPool(),
        nn.FlattenLayer(),
        nn.Dense(64, 10),
    )
    return hyper_net(
        nn.Chain(nn.Embedding(2, 32), nn.Dense(32, 64, jax.nn.relu),
                 nn.Dense(64, luxc.parameter_count(core_network))),
        core_network,
    )


def accuracy(model_compiled, ps: dict, st: dict, data: tuple, data_idx: jax.Array) -> float:
    """The share of samples whose largest logit is the labelled class, in test mode."""
    correct = total = 0
    st = luxc.testmode(st)
    for x, y in data_loader(data, 32, None):
        y_hat, _ = model_compiled((data_idx, x), ps, st)
        correct += int(jnp.sum(jnp.argmax(y_hat, -1) == jnp.argmax(y, -1)))
        total += len(y)
    return correct / total


def train(datasets: list[tuple], nepochs: int = 50, seed: int = 1234) -> list[float]:
    """Lux's ``train``: one line per epoch and dataset, then the final accuracies; returns the
    final test accuracies (percent) of the two datasets."""
    rng = np.random.default_rng(seed)
    model = create_model()
    ps, st = luxc.setup(jax.random.key(seed), model)
    train_state = luxc.TrainState(model, ps, st, optax.adam(3e-4))
    model_compiled = jax.jit(lambda inputs, ps, st: model(inputs, ps, st))
    loss = luxc.CrossEntropyLoss(logits=True)

    def accuracies(idx: int) -> tuple[float, float]:
        args = (train_state.parameters, train_state.states)
        return tuple(round(accuracy(model_compiled, *args, data, jnp.int32(idx)) * 100, 2)
                     for data in datasets[idx])

    for epoch in range(1, nepochs + 1):
        for data_idx in range(2):
            # a traced index: one program serves both datasets (Lux's ConcreteRNumber)
            concrete_data_idx = jnp.int32(data_idx)
            stime = time.perf_counter()
            for x, y in data_loader(datasets[data_idx][0], 32, rng):
                _, _, _, train_state = single_train_step_(
                    luxc.AutoXLA(), loss, ((concrete_data_idx, x), y), train_state,
                    return_gradients=False)
            ttime = time.perf_counter() - stime
            train_acc, test_acc = accuracies(data_idx)
            print(f"[{epoch:3d}/{nepochs:3d}]\t{NAMES[data_idx]:>12s}\tTime {ttime:3.5f}s\t"
                  f"Training Accuracy: {train_acc:3.2f}%\tTest Accuracy: {test_acc:3.2f}%")
    print()
    test_acc_list = []
    for data_idx in range(2):
        train_acc, test_acc = accuracies(data_idx)
        print(f"[FINAL]\t{NAMES[data_idx]:>12s}\tTraining Accuracy: {train_acc:3.2f}%\t"
              f"Test Accuracy: {test_acc:3.2f}%")
        test_acc_list.append(test_acc)
    return test_acc_list


def main(argv: Sequence[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs instead of 50")
    args = parser.parse_args(argv)
    datasets = load_datasets(np.random.default_rng(0))
    return train(datasets, nepochs=2 if args.quick else 50)


if __name__ == "__main__":
    main()
