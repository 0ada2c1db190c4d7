"""Lux.jl's layer tutorials ported to luxc (``examples/lux/<Name>.py``, translations of Lux's
``examples/<Name>/main.jl`` at 6f4b96c): each runs in-process in its ``--quick`` mode and shows
the trend the tutorial shows; the pieces each tutorial builds by hand are checked against
independent values (closed forms, luxc's own layers, direct indexing)."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxc
from luxc import nn
from tests.support import ROOT

EXAMPLES = ROOT / "examples" / "lux"


def _tutorial(name: str):
    if str(EXAMPLES) not in sys.path:  # the tutorials import their `_dataloader` beside them
        sys.path.insert(0, str(EXAMPLES))
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


# HyperNet (Lux: examples/HyperNet/main.jl)

def test_hypernet_parameters_are_the_generators_alone():
    model = _tutorial("HyperNet").create_model()
    core = model.fields["core_network"]
    # three 3×3 convolutions 1→16→32→64 and Dense(64 => 10), closed form
    assert luxc.parameter_count(core) == (9 * 16 + 16) + (9 * 16 * 32 + 32) + (9 * 32 * 64 + 64) + 650
    generator = 2 * 32 + (32 * 64 + 64) + (64 * 23946 + 23946)
    assert luxc.parameter_count(model) == generator


def test_hypernet_generated_parameters_decide_the_output(key):
    model = _tutorial("HyperNet").create_model()
    ps, st = luxc.setup(key, model)
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    apply = jax.jit(model)  # one program for the three calls below, not three runs op by op
    y0, _ = apply((jnp.int32(0), x), ps, st)
    y1, _ = apply((jnp.int32(1), x), ps, st)
    assert y0.shape == (3, 10)
    assert not np.allclose(y0, y1)  # each dataset's embedding gives its own classifier
    # a zero last generator layer gives every core parameter 0: the logits are exactly 0
    last = ps["weight_generator"]["layer_3"]
    zeroed = {**ps["weight_generator"], "layer_3": jax.tree_util.tree_map(jnp.zeros_like, last)}
    y, _ = apply((jnp.int32(0), x), {**ps, "weight_generator": zeroed}, st)
    np.testing.assert_array_equal(y, np.zeros((3, 10)))


def test_hypernet_second_dataset_is_the_inverted_digits_with_reversed_labels():
    first, second = _tutorial("HyperNet").load_datasets(np.random.default_rng(0))
    (x1, y1), (x2, y2) = first[0], second[0]
    assert x1.shape[1:] == (28, 28, 1) and 0 <= x1.min() and x1.max() <= 1
    np.testing.assert_allclose(x2, 1 - x1)
    np.testing.assert_array_equal(y2.argmax(-1), 9 - y1.argmax(-1))


def test_hypernet_quick_classifies_both_datasets_above_chance(capsys):
    test_accuracies = _tutorial("HyperNet").main(["--quick"])
    assert min(test_accuracies) > 40  # chance is 10%; Lux's CI asserts > 35
    assert capsys.readouterr().out.count("[FINAL]") == 2


# ConvolutionalVAE (Lux: examples/ConvolutionalVAE/main.jl)

def _conv(k: int, i: int, o: int, groups: int = 1) -> int:
    """Parameters of a k×k Conv with a bias: k·k·(i/groups)·o + o."""
    return k * k * (i // groups) * o + o


def test_cvae_has_luxs_parameter_count_at_64_by_64():
    model = _tutorial("ConvolutionalVAE").CVAE(num_latent_dims=8, image_shape=(64, 64, 1),
                                               max_num_filters=64)
    encoder = (_conv(3, 1, 16) + _conv(3, 16, 32) + _conv(3, 32, 64) + 2 * (16 + 32 + 64)
               + 2 * (4096 * 8 + 8))
    decoder = (8 * 4096 + 4096) + _conv(3, 64, 32) + _conv(3, 32, 16) + _conv(3, 16, 1) + 2 * (32 + 16)
    assert luxc.parameter_count(model) == encoder + decoder  # Lux prints 0.1493 M


def test_cvae_samples_fresh_noise_each_call_and_is_differentiable_in_the_mean(key):
    model = _tutorial("ConvolutionalVAE").CVAE(num_latent_dims=4, image_shape=(16, 16, 1),
                                               max_num_filters=8)
    ps, st = luxc.setup(key, model)
    x = jax.random.uniform(jax.random.key(1), (3, 16, 16, 1))
    st = luxc.testmode(st)["encoder"]
    encoder = jax.jit(model.encoder)  # one program for both calls, not two runs op by op
    (z1, mu1, _), st2 = encoder(x, ps["encoder"], st)
    (z2, mu2, _), _ = encoder(x, ps["encoder"], st2)
    np.testing.assert_allclose(mu2, mu1, rtol=1e-6)
    assert not np.allclose(z2, z1)  # the state's rng advanced

    def total_z(bias):
        p = {**ps["encoder"], "proj_mu": {**ps["encoder"]["proj_mu"], "bias": bias}}
        return jnp.sum(model.encoder(x, p, st)[0][0])

    # z = μ + εσ: ∂Σz/∂b_μ is the batch size for every latent dimension
    np.testing.assert_allclose(jax.jit(jax.grad(total_z))(ps["encoder"]["proj_mu"]["bias"]),
                               np.full(4, 3.0))


@pytest.mark.slow
def test_cvae_quick_negative_elbo_falls_and_samples_are_plotted(tmp_path):
    picture = tmp_path / "samples.png"
    losses = _tutorial("ConvolutionalVAE").main(["--quick", "--plot", str(picture)])
    assert len(losses) == 3 and losses[-1] < losses[0] / 1.5
    assert picture.exists() == (importlib.util.find_spec("matplotlib") is not None)


# CIFAR10 (Lux: examples/CIFAR10/{simple_cnn,resnet20,conv_mixer}.jl)

def test_resnet20_and_conv_mixer_parameter_counts_are_the_closed_forms():
    tutorial = _tutorial("CIFAR10")
    bn = lambda c: 2 * c  # noqa: E731

    def block(i, o, stride):
        shortcut = 0 if stride == 1 and i == o else _conv(3, i, o)
        return shortcut + _conv(3, i, o) + bn(o) + _conv(3, o, o) + bn(o)

    blocks = sum(block(i if n == 0 else o, o, s if n == 0 else 1)
                 for i, o, s in ((16, 16, 1), (16, 32, 2), (32, 64, 2)) for n in range(3))
    assert luxc.parameter_count(tutorial.resnet20()) == _conv(3, 3, 16) + bn(16) + blocks + 650
    mixer = _conv(5, 8, 8, groups=8) + bn(8) + _conv(1, 8, 8) + bn(8)  # depthwise: groups = dim
    expected = _conv(2, 3, 8) + bn(8) + 2 * mixer + (8 * 10 + 10)
    assert luxc.parameter_count(tutorial.conv_mixer(dim=8, depth=2)) == expected


def test_clip_norm_rescales_each_array_to_norm_at_most_omega():
    clip = _tutorial("CIFAR10").clip_norm(10.0)
    grads = {"big": jnp.array([12.0, 16.0]), "small": jnp.array([3.0, 4.0])}  # norms 20 and 5
    updates, _ = clip.update(grads, clip.init(grads))
    np.testing.assert_allclose(updates["big"], [6.0, 8.0], rtol=1e-6)  # per array, not global
    np.testing.assert_allclose(updates["small"], [3.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_simple_cnn_quick_learns_the_digits(precision):
    args = ["simple_cnn", "--quick"] + (["--bfloat16"] if precision == "bf16" else [])
    rows, ts = _tutorial("CIFAR10").main(args)
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(ts.parameters)} == {jnp.dtype(dtype)}
    assert rows[-1][3] > 80  # test accuracy (%), chance is 10


@pytest.mark.slow
def test_conv_mixer_quick_follows_the_schedule_with_one_program():
    rows, ts = _tutorial("CIFAR10").main(["conv_mixer", "--quick", "--clip-norm"])
    steps = 1497 // 128
    knots, values = [0, 1, 2, 4], [0, 0.05, 0.05 / 20, 0]  # 3 epochs: 3·2÷5, 3·4÷5, 3 + 1
    # each row shows the rate of the epoch's last step, (epoch - 1) + (steps + 1) / steps
    expected = [np.interp(e - 1 + (steps + 1) / steps, knots, values) for e in (1, 2, 3)]
    np.testing.assert_allclose([r[1] for r in rows], expected, rtol=1e-6)
    assert luxc.cache_info(ts).entries == 1  # adjust_ on every step never recompiled
    assert rows[-1][2] > rows[0][2]  # training accuracy rises


@pytest.mark.slow
def test_resnet20_one_quick_epoch_beats_chance():
    rows, _ = _tutorial("CIFAR10").main(["resnet20", "--quick", "--epochs", "1"])
    assert rows[-1][2] > 20
