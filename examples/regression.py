"""The regression example of Lux.jl's training documentation: an @compact MLP (49,921
parameters) fitting y = 2x - x³ on [-2, 2].

Run it:   python examples/regression.py
Compile:  luxc compile examples/regression.py:factory --out artifacts/regression   (a directory)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import luxc
from luxc import nn


def make_model() -> luxc.nn.CompactLayer:
    @luxc.compact(w1=nn.Dense(1, 128), w2=[nn.Dense(128, 128) for _ in range(3)],
                  w3=nn.Dense(128, 1), act=jax.nn.relu)
    def model(self, x):
        h = self.act(self.w1(x))
        for w in self.w2:
            h = self.act(w(h))
        return self.w3(h)

    return model


def factory(seed: int = 0):
    """``(objective, data, train_state)``: what ``single_train_step_`` takes after the backend."""
    model = make_model()
    ps, st = luxc.setup(jax.random.key(seed), model)
    x = jnp.arange(-2.0, 2.05, 0.1, dtype=jnp.float32)[:, None]  # Julia's -2.0f0:0.1f0:2.0f0
    y = 2 * x - x**3
    # inject_hyperparams keeps the learning rate on the device: luxc.training.adjust can change
    # it without recompiling.
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=3e-3)
    return luxc.MSELoss(), (x, y), luxc.TrainState(model, ps, st, optimizer)


def main(steps: int = 500) -> None:
    loss_fn, data, ts = factory()
    for i in range(steps):
        _, loss, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), loss_fn, data, ts,
                                                          return_gradients=False)
        if i % 100 == 0 or i == steps - 1:
            print(f"step {ts.step:4d}  loss {float(loss):.3g}")
    print(luxc.cache_info(ts))


if __name__ == "__main__":
    main()
