"""LeNet-5 on synthetic 28×28 images (channels-last), the hard case for XLA:CPU.

Profile: luxc profile examples/lenet.py:factory --steps 20
"""

from __future__ import annotations

import jax
import optax

import luxc
from luxc import nn


def make_model() -> nn.Chain:
    return nn.Chain(
        nn.Conv((5, 5), 1, 6, jax.nn.relu), nn.MaxPool((2, 2)),
        nn.Conv((5, 5), 6, 16, jax.nn.relu), nn.MaxPool((2, 2)),
        nn.FlattenLayer(),
        nn.Dense(256, 120, jax.nn.relu), nn.Dense(120, 84, jax.nn.relu), nn.Dense(84, 10),
    )


def factory(batch: int = 128, seed: int = 0):
    key_model, key_x, key_y = jax.random.split(jax.random.key(seed), 3)
    model = make_model()
    ps, st = luxc.setup(key_model, model)
    x = jax.random.normal(key_x, (batch, 28, 28, 1))
    y = jax.nn.one_hot(jax.random.randint(key_y, (batch,), 0, 10), 10)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    return luxc.CrossEntropyLoss(logits=True), (x, y), ts
