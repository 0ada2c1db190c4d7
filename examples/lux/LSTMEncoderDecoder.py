"""Lux.jl's tutorial "Building a LSTM Encoder-Decoder model" (``examples/LSTMEncoderDecoder/main.jl``
at 6f4b96c), in luxc: a noisy series y = sin(2t) + cos(t)/2 + N(0, 0.2²) cut into windows of 80
inputs and 20 targets; an encoder LSTM stepped over the inputs in a traced loop (``lax.scan``,
Lux's ``@trace for``), a decoder LSTM + Dense stepped 20 times, fed the true previous value
(teacher forcing) or its own prediction at random (mixed teacher forcing, ratio 0.5) in training
and its own predictions in test mode; Adam(3e-4), MSELoss, 50 epochs, compiled steps (AutoXLA)
without gradients returned, a compiled forward pass for the validation loss.

Two departures from Lux's code, both following its stated intent (docs/tutorials-layers.md):
Lux's ``batchsize=min(batchsize, size(X_train, 4))`` is 1 (a 3-d array's 4th size), here the
requested 4; and Lux's "recursive"/test-mode condition feeds the (zero) target, here the
prediction. Batch-first shapes: windows are ``(N, 80, 1)`` and ``(N, 20, 1)``.

Run it:  python examples/lux/LSTMEncoderDecoder.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn
from luxc.training import single_train_step_

MODES = ("recursive", "teacher_forcing", "mixed_teacher_forcing")


def synthetic_data(rng: np.random.Generator, nt: int = 2000, tf: float = 80 * np.pi
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``t`` (nt points on [0, tf]) and ``y = sin(2t) + 0.5 cos(t) + 0.2 ε``, float32."""
    t = np.linspace(0.0, tf, nt, dtype=np.float32)
    y = np.sin(2 * t) + 0.5 * np.cos(t) + rng.standard_normal(nt, dtype=np.float32) * 0.2
    return t, y.astype(np.float32)


def train_test_split(t: np.ndarray, y: np.ndarray, split: float = 0.8) -> tuple[np.ndarray, ...]:
    """The first ``ceil(split · len)`` points train, the rest test; ``y`` parts ``(len, 1)``."""
    cut = int(np.ceil(len(t) * split))
    return t[:cut], y[:cut, None], t[cut:], y[cut:, None]


def windowed_dataset(y: np.ndarray, input_window: int = 5, output_window: int = 1,
                     stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``y (L, features)``: ``X (n, input_window, features)`` and the
    ``output_window`` values that follow each, ``Y (n, output_window, features)``, with
    ``n = (L - input_window - output_window) // stride + 1``."""
    n = (len(y) - input_window - output_window) // stride + 1
    starts = stride * np.arange(n)
    x = np.stack([y[s:s + input_window] for s in starts])
    target = np.stack([y[s + input_window:s + input_window + output_window] for s in starts])
    return x.astype(np.float32), target.astype(np.float32)


class RNNEncoder(nn.AbstractLayer):
    """Lux's ``RNNEncoder <: AbstractLuxWrapperLayer{:cell}``: the cell's parameters and state
    are the encoder's own. ``x (batch, time, in)`` → ``((y, carry), st)`` after the last step."""

    def __init__(self, cell: nn.AbstractLayer) -> None:
        self.cell = cell

    def init_parameters(self, key: jax.Array) -> dict:
        return self.cell.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return self.cell.init_states(key)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[Any, dict]:
        first, st = self.cell(x[:, 0], ps, st)

        def step(state, x_t):
            (_, carry), st = state
            return self.cell((x_t, carry), ps, st), None

        last, _ = jax.lax.scan(step, (first, st), jnp.moveaxis(x[:, 1:], 1, 0))
        return last


class RNNDecoder(nn.AbstractContainerLayer):
    """Lux's ``RNNDecoder``: from ``(decoder_input (batch, in), carry, Val(target_len), target)``
    the cell and the linear head predict ``target_len`` steps, ``(batch, target_len, in)``.

    The next input is the true previous target where the step's condition holds, else the
    prediction: in training, ``mixed_teacher_forcing`` draws each step's condition with
    probability ``teacher_forcing_ratio``, ``teacher_forcing`` one draw for all steps,
    ``recursive`` never; in test mode the prediction is always fed back. State: the cell's and
    the linear head's, ``training`` and ``rng`` (key data, split on every training call).
    """

    def __init__(self, cell: nn.AbstractLayer, linear: nn.AbstractLayer, *,
                 training_mode: str = "recursive", teacher_forcing_ratio: float = 0.5) -> None:
        if training_mode not in MODES:
            raise ValueError(f"RNNDecoder: training_mode must be one of {MODES}; "
                             f"received {training_mode!r}")
        self.cell, self.linear = cell, linear
        self.training_mode, self.teacher_forcing_ratio = training_mode, teacher_forcing_ratio

    def sublayers(self) -> dict[str, nn.AbstractLayer]:
        return {"cell": self.cell, "linear": self.linear}

    def init_states(self, key: jax.Array) -> dict:
        key, own = jax.random.split(key)
        return {**super().init_states(key), "training": luxc.Val(True),
                "rng": jax.random.key_data(own)}

    def _conditions(self, training: bool, key: jax.Array, target_len: int) -> jax.Array:
        if not training or self.training_mode == "recursive":
            return jnp.zeros(target_len, bool)
        if self.training_mode == "teacher_forcing":
            return jnp.full(target_len, jax.random.uniform(key) < self.teacher_forcing_ratio)
        return jax.random.uniform(key, (target_len,)) < self.teacher_forcing_ratio

    def __call__(self, inputs: tuple, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        decoder_input, carry, target_len, target = inputs
        target_len = target_len.value
        rng, sub = jax.random.split(jax.random.wrap_key_data(st["rng"]))
        if target is None:
            target = jnp.zeros((decoder_input.shape[0], target_len, decoder_input.shape[1]),
                               decoder_input.dtype)
        conditions = self._conditions(bool(st["training"]), sub, target_len)

        def step(state, inputs):
            decoder_input, carry, st_cell, st_linear = state
            use_target, target_t = inputs
            (y_latent, carry), st_cell = self.cell((decoder_input, carry), ps["cell"], st_cell)
            y_pred, st_linear = self.linear(y_latent, ps["linear"], st_linear)
            decoder_input = jnp.where(use_target, target_t, y_pred)
            return (decoder_input, carry, st_cell, st_linear), y_pred

        state = (decoder_input, carry, st["cell"], st["linear"])
        (_, _, st_cell, st_linear), ys = jax.lax.scan(
            step, state, (conditions, jnp.moveaxis(target, 1, 0)))
        new_st = {**st, "cell": st_cell, "linear": st_linear, "rng": jax.random.key_data(rng)}
        return jnp.moveaxis(ys, 0, 1), new_st


class RNNEncoderDecoder(nn.AbstractContainerLayer):
    """``(x (batch, time, in), Val(target_len), target | None)`` → ``(batch, target_len, in)``:
    the encoder's last carry starts the decoder, whose first input is the last ``x``."""

    def __init__(self, encoder: RNNEncoder, decoder: RNNDecoder) -> None:
        self.encoder, self.decoder = encoder, decoder

    def sublayers(self) -> dict[str, nn.AbstractLayer]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def __call__(self, inputs: tuple, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        x, target_len, target = inputs
        (_, carry), st_encoder = self.encoder(x, ps["encoder"], st["encoder"])
        pred, st_decoder = self.decoder((x[:, -1], carry, target_len, target),
                                        ps["decoder"], st["decoder"])
        return pred, {"encoder": st_encoder, "decoder": st_decoder}


def train(train_dataset: tuple, validation_dataset: tuple, *, nepochs: int = 50,
          batchsize: int = 32, hidden_dims: int = 32,
          training_mode: str = "mixed_teacher_forcing", teacher_forcing_ratio: float = 0.5,
          learning_rate: float = 1e-3, seed: int = 0) -> tuple[luxc.StatefulLuxLayer, list]:
    """Lux's ``train``: prints the compile time, then per epoch its time and validation loss;
    returns the trained model and the validation losses."""
    (x_train, y_train), (x_test, y_test) = train_dataset, validation_dataset
    in_dims, target_len = x_train.shape[-1], luxc.Val(y_train.shape[1])
    rng = np.random.default_rng(seed)
    model = RNNEncoderDecoder(
        RNNEncoder(nn.LSTMCell(in_dims, hidden_dims)),
        RNNDecoder(nn.LSTMCell(in_dims, hidden_dims), nn.Dense(hidden_dims, in_dims),
                   training_mode=training_mode, teacher_forcing_ratio=teacher_forcing_ratio))
    ps, st = luxc.setup(jax.random.key(seed), model)
    train_state = luxc.TrainState(model, ps, st, optax.adam(learning_rate))

    stime = time.perf_counter()
    forward = jax.jit(lambda x, ps, st: model((x, target_len, None), ps, st))
    model_compiled = forward.lower(x_test, ps, luxc.testmode(st)).compile()
    print(f"Compilation time: {time.perf_counter() - stime:.4f} seconds\n")

    losses = []
    for epoch in range(1, nepochs + 1):
        stime = time.perf_counter()
        order = rng.permutation(len(x_train))
        for start in range(0, len(order) - batchsize + 1, batchsize):
            idx = order[start:start + batchsize]
            x, y = jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
            _, _, _, train_state = single_train_step_(
                luxc.AutoXLA(), luxc.MSELoss(), ((x, target_len, y), y), train_state,
                return_gradients=False)
        ttime = time.perf_counter() - stime
        y_pred, _ = model_compiled(x_test, train_state.parameters,
                                   luxc.testmode(train_state.states))
        losses.append(float(luxc.MSELoss()(y_pred, jnp.asarray(y_test))))
        print(f"[{epoch:3d}/{nepochs:3d}]\tTime per epoch: {ttime:3.5f}s\t"
              f"Validation Loss: {losses[-1]:.4f}")
    trained = luxc.StatefulLuxLayer(model, train_state.parameters,
                                    luxc.testmode(train_state.states))
    return trained, losses


def main(argv: Sequence[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 epochs instead of 50")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    t, y = synthetic_data(rng)
    _, y_train, _, y_test = train_test_split(t, y)
    x_train, y_train = windowed_dataset(y_train, input_window=80, output_window=20, stride=5)
    x_test, y_test = windowed_dataset(y_test, input_window=80, output_window=20, stride=5)
    trained, losses = train((x_train, y_train), (x_test, y_test),
                            nepochs=6 if args.quick else 50, batchsize=4, hidden_dims=32,
                            training_mode="mixed_teacher_forcing", teacher_forcing_ratio=0.5,
                            learning_rate=3e-4)
    y_pred = trained((jnp.asarray(x_test), luxc.Val(20), None))
    print(f"Test MSE of the trained model's predictions: "
          f"{float(jnp.mean((y_pred - y_test) ** 2)):.4f}")
    return losses


if __name__ == "__main__":
    main()
