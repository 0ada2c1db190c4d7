"""Lux.jl's layer tutorials ported to luxc (``examples/lux/<Name>.py``, translations of Lux's
``examples/<Name>/main.jl`` at 6f4b96c): each runs in-process in its ``--quick`` mode and shows
the trend the tutorial shows; the pieces each tutorial builds by hand are checked against
independent values (closed forms, luxc's own layers, direct indexing)."""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxc
from luxc import nn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "lux"


def _tutorial(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# SimpleRNN (Lux: examples/SimpleRNN/main.jl)

def test_make_spiral_without_noise_is_the_closed_form_and_its_mirror():
    points = _tutorial("SimpleRNN").make_spiral(np.random.default_rng(0), 50, noise=0.0)
    i = np.arange(50)
    radius = 6.5 * (104 - i) / 104
    angle = i * np.pi / 16
    np.testing.assert_allclose(points[:50], np.c_[radius * np.sin(angle), radius * np.cos(angle)])
    np.testing.assert_allclose(points[50:], -points[:50])


def test_spiral_classifier_equals_recurrence_of_its_lstm_cell_then_the_head(key):
    # Lux: "We can use default Lux blocks -- Recurrence(LSTMCell(in_dims => hidden_dims))"
    tutorial = _tutorial("SimpleRNN")
    model = tutorial.SpiralClassifier(2, 8, 1)
    ps, st = luxc.setup(key, model)
    x = jax.random.normal(jax.random.key(1), (5, 7, 2))
    y, _ = model(x, ps, st)
    h, _ = nn.Recurrence(model.lstm_cell)(x, ps["lstm_cell"], st["lstm_cell"])
    expected = jax.nn.sigmoid(h @ ps["classifier"]["weight"].T + ps["classifier"]["bias"])
    assert y.shape == (5,)
    np.testing.assert_allclose(y, expected[:, 0], rtol=1e-5, atol=1e-6)


def test_simple_rnn_quick_learns_and_compact_matches_the_container(capsys):
    results = _tutorial("SimpleRNN").main(["--quick"])
    container, compact = results["SpiralClassifier"], results["SpiralClassifierCompact"]
    # same seeds, same parameter names: the two definitions are one model
    np.testing.assert_allclose([r["loss"] for r in compact], [r["loss"] for r in container],
                               rtol=1e-5)
    assert container[-1]["loss"] < container[0]["loss"] / 2
    assert container[-1]["val_accuracy"] > 0.95  # Lux: 1.0 from epoch 2
    assert capsys.readouterr().out.count("Validation:\tLoss") == 2 * len(container)


# LSTMEncoderDecoder (Lux: examples/LSTMEncoderDecoder/main.jl)

def test_windowed_dataset_takes_the_values_after_each_input_window():
    tutorial = _tutorial("LSTMEncoderDecoder")
    y = np.arange(30, dtype=np.float32)[:, None]
    x, target = tutorial.windowed_dataset(y, input_window=8, output_window=3, stride=5)
    assert x.shape == (4, 8, 1) and target.shape == (4, 3, 1)  # (30 - 8 - 3) // 5 + 1
    np.testing.assert_array_equal(x[2, :, 0], y[10:18, 0])
    np.testing.assert_array_equal(target[2, :, 0], y[18:21, 0])


def _decoder_outputs(mode: str, training: bool, target: jax.Array) -> jax.Array:
    tutorial = _tutorial("LSTMEncoderDecoder")
    model = tutorial.RNNEncoderDecoder(
        tutorial.RNNEncoder(nn.LSTMCell(1, 4)),
        tutorial.RNNDecoder(nn.LSTMCell(1, 4), nn.Dense(4, 1), training_mode=mode,
                            teacher_forcing_ratio=1.0))
    ps, st = luxc.setup(jax.random.key(0), model)
    st = st if training else luxc.testmode(st)
    x = jnp.linspace(-1, 1, 2 * 6).reshape(2, 6, 1)
    return model((x, luxc.Val(5), target), ps, st)[0]


@pytest.mark.parametrize("mode, training", [("recursive", True), ("teacher_forcing", False),
                                            ("mixed_teacher_forcing", False)])
def test_decoder_feeds_back_its_predictions_without_teacher_forcing(mode, training):
    target = jnp.ones((2, 5, 1))
    fed_back = _decoder_outputs(mode, training, None)
    np.testing.assert_allclose(_decoder_outputs(mode, training, target), fed_back, rtol=1e-6)


def test_decoder_with_teacher_forcing_feeds_the_previous_target():
    target = jnp.ones((2, 5, 1))
    out = _decoder_outputs("teacher_forcing", True, target)
    changed = _decoder_outputs("teacher_forcing", True, target.at[:, 2].set(-3.0))
    np.testing.assert_allclose(changed[:, :3], out[:, :3], rtol=1e-6)  # steps before it
    assert not np.allclose(changed[:, 3], out[:, 3])  # the step it is fed to
    np.testing.assert_allclose(_decoder_outputs("teacher_forcing", True, target.at[:, 4].set(-3.0)),
                               out, rtol=1e-6)  # the last target is never an input


def test_lstm_encoder_decoder_quick_validation_loss_falls(capsys):
    losses = _tutorial("LSTMEncoderDecoder").main(["--quick"])
    assert len(losses) == 6
    assert losses[-1] < losses[0] / 3
    assert "Compilation time:" in capsys.readouterr().out
