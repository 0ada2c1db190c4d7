"""Lux's recurrent layers (Lux.jl 6f4b96c, src/layers/recurrent.jl; tests in
test/recurrent_layers/*.jl): each cell against its formula written here in numpy, Recurrence
against a Python loop of the cell, Lux's own test values, the carry API and its errors, the
scan (the module does not grow with T), and one end-to-end check of the family."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.nn import BatchLastIndex, TimeLastIndex
from tests.support import luxc_cli

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 3)).astype(np.float32)          # (batch, in)
SEQ = RNG.normal(size=(2, 6, 3)).astype(np.float32)     # (batch, time, in)


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _np(ps):
    return {k: np.asarray(v, np.float64) for k, v in ps.items()}


def _proj(p, x, h, use_bias=True):
    gx, gh = x @ p["weight_ih"].T, h @ p["weight_hh"].T
    return (gx + p["bias_ih"], gh + p["bias_hh"]) if use_bias else (gx, gh)


# --- cells against their formulas ----------------------------------------------------------

@pytest.mark.parametrize("activation,use_bias", [(jnp.tanh, True), (None, False)])
def test_rnncell_is_the_elman_formula(activation, use_bias):
    cell = nn.RNNCell(3, 5, activation, use_bias=use_bias)
    ps, st = luxc.setup(1, cell)
    h0 = RNG.normal(size=(4, 5)).astype(np.float32)
    (y, (h,)), _ = cell((X, (h0,)), ps, st)
    p = _np(ps)
    gx, gh = _proj(p, X, h0, use_bias)
    expected = np.tanh(gx + gh) if activation else gx + gh
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(h, y)


def test_lstmcell_gates_are_input_forget_cell_output_in_that_order():
    cell = nn.LSTMCell(3, 5)
    ps, st = luxc.setup(2, cell)
    h0, c0 = (RNG.normal(size=(4, 5)).astype(np.float32) for _ in range(2))
    (y, (h, c)), _ = cell((X, (h0, c0)), ps, st)
    p = _np(ps)
    z = sum(_proj(p, X, h0))
    i, f, g, o = (z[:, k * 5:(k + 1) * 5] for k in range(4))
    c_ref = _sigmoid(f) * c0 + _sigmoid(i) * np.tanh(g)
    np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, _sigmoid(o) * np.tanh(c_ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(h, y)


def test_grucell_reset_gate_multiplies_the_recurrent_projection_with_its_bias():
    # recurrent.jl: n = tanh_fast(gxs₃ + r * ghbs₃), ghbs = W_hh h + b_hh.
    cell = nn.GRUCell(3, 5)
    ps, st = luxc.setup(3, cell)
    ps = {**ps, "bias_hh": ps["bias_hh"] + 0.5}  # a bias that matters where r multiplies
    h0 = RNG.normal(size=(4, 5)).astype(np.float32)
    (y, (h,)), _ = cell((X, (h0,)), ps, st)
    gx, gh = _proj(_np(ps), X, h0)
    r = _sigmoid(gx[:, :5] + gh[:, :5])
    z = _sigmoid(gx[:, 5:10] + gh[:, 5:10])
    n = np.tanh(gx[:, 10:] + r * gh[:, 10:])
    np.testing.assert_allclose(y, (1 - z) * n + z * h0, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(h, y)


@pytest.mark.parametrize("make", [lambda: nn.RNNCell(3, 5), lambda: nn.LSTMCell(3, 5),
                                  lambda: nn.GRUCell(3, 5)])
def test_without_a_carry_a_cell_starts_from_zeros_and_unbatched_is_a_batch_of_one(make):
    cell = make()
    ps, st = luxc.setup(0, cell)
    (y, carry), _ = cell(X, ps, st)
    zeros = tuple(jnp.zeros((4, 5)) for _ in carry)
    (y_ref, carry_ref), _ = cell((X, zeros), ps, st)
    np.testing.assert_array_equal(y, y_ref)
    (y1, carry1), _ = cell(X[0], ps, st)
    (y1c, _), _ = cell((X[0], tuple(c[0] for c in carry)), ps, st)
    assert y1.shape == (5,) and all(c.shape == (5,) for c in carry1)
    np.testing.assert_allclose(y1, y[0], rtol=1e-6)
    (y2, _), _ = cell((X, carry), ps, st)
    np.testing.assert_allclose(y1c, y2[0], rtol=1e-6)


# --- parameters, initialisers, printout ------------------------------------------------------

@pytest.mark.parametrize("cell,gates,printed", [
    (nn.RNNCell(3, 5, train_state=True), 1, "RNNCell(3 => 5, tanh, train_state=true)"),
    (nn.LSTMCell(3, 5, use_bias=False, train_memory=True), 4,
     "LSTMCell(3 => 5, use_bias=false, train_memory=true)"),
    (nn.GRUCell(3, 5), 3, "GRUCell(3 => 5)"),
])
def test_parameter_names_shapes_count_and_printout_are_luxs(cell, gates, printed):
    ps, st = luxc.setup(0, cell)
    g = gates * 5
    expected = {"weight_ih": (g, 3), "weight_hh": (g, 5)}
    if cell.use_bias:
        expected |= {"bias_ih": (g,), "bias_hh": (g,)}
    if cell.train_state:
        expected["hidden_state"] = (5,)
    if cell.train_memory:
        expected["memory"] = (5,)
    assert {k: v.shape for k, v in ps.items()} == expected
    assert luxc.parameter_count(cell) == sum(int(np.prod(s)) for s in expected.values())
    assert set(st) == {"rng"}
    assert cell.summary() == printed and printed in repr(cell)


def test_default_initialisers_follow_luxs_docstrings():
    # Lux's docstrings: U(±1/√out) when an initialiser is `nothing` (RNN, LSTM weights and
    # biases, GRU biases); GRU weights glorot_uniform. Lux's code draws (randn - 0.5)·2/√out,
    # which leaves ±1/√out about a third of the time; its GRU code defaults the bias to zeros.
    out, n = 64, 64
    for cell in (nn.RNNCell(n, out), nn.LSTMCell(n, out)):
        ps, _ = luxc.setup(0, cell)
        bound = 1 / np.sqrt(out)
        for name, v in ps.items():
            v = np.asarray(v)
            assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound, name
            if v.size > 1000:  # a uniform's standard deviation is bound/√3
                np.testing.assert_allclose(v.std(), bound / np.sqrt(3), rtol=0.05)
    ps, _ = luxc.setup(0, nn.GRUCell(16, out))
    for name, fan_in in (("weight_ih", 16), ("weight_hh", out)):
        bound = np.sqrt(6 / (fan_in + out))
        w = np.asarray(ps[name])
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert 0 < np.abs(np.asarray(ps["bias_ih"])).max() <= 1 / np.sqrt(out)


def test_per_gate_initialisers_fill_their_gate_blocks():
    const = [lambda v: (lambda k, s, d: jnp.full(s, v, d)) for _ in range(4)]
    cell = nn.LSTMCell(2, 3, init_weight=tuple(c(i) for i, c in enumerate(const)))
    ps, _ = luxc.setup(0, cell)
    np.testing.assert_array_equal(ps["weight_ih"][:, 0], np.repeat(np.arange(4.0), 3))
    # init_recurrent_weight defaults to init_weight, as Lux.
    np.testing.assert_array_equal(ps["weight_hh"][:, 0], np.repeat(np.arange(4.0), 3))


def test_a_trained_initial_state_and_memory_are_repeated_over_the_batch_and_get_gradients():
    # lstmcell_tests.jl "Trainable hidden states".
    cell = nn.LSTMCell(3, 5, train_state=True, train_memory=True)
    ps, st = luxc.setup(0, cell)
    ps = {**ps, "hidden_state": jnp.linspace(-1, 1, 5), "memory": jnp.linspace(1, 2, 5)}
    (y, _), _ = cell(X, ps, st)
    carry = (jnp.tile(ps["hidden_state"], (4, 1)), jnp.tile(ps["memory"], (4, 1)))
    (y_ref, _), _ = cell((X, carry), ps, st)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(cell(X, p, st)[0][0] ** 2))(ps)
    assert np.abs(grads["hidden_state"]).sum() > 0 and np.abs(grads["memory"]).sum() > 0


# --- errors ----------------------------------------------------------------------------------

def _one_line(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message and all(p in message for p in parts), message


def test_a_carry_of_the_wrong_shape_is_one_line_naming_it():
    cell = nn.LSTMCell(3, 5)
    ps, st = luxc.setup(0, cell)
    with pytest.raises(nn.LayerShapeError) as e:
        cell((X, (jnp.zeros((4, 5)), jnp.zeros((4, 6)))), ps, st)
    _one_line(e, "LSTMCell(3 => 5)", "carry[1]", "(4, 5)", "(4, 6)")
    with pytest.raises(nn.LayerShapeError) as e:
        cell((X, (jnp.zeros((4, 5)),)), ps, st)
    _one_line(e, "carry must be a tuple of 2 arrays (h, c)", "[(4, 5)]")
    with pytest.raises(nn.LayerShapeError) as e:
        cell((X[0], (jnp.zeros(5), jnp.zeros(4))), ps, st)
    _one_line(e, "carry[1] must have shape (5,)", "received (4,)")
    with pytest.raises(nn.LayerShapeError) as e:
        cell(jnp.zeros((4, 2)), ps, st)
    _one_line(e, "expects x of shape (batch, 3)", "(4, 2)")


@pytest.mark.parametrize("build,parts", [
    (lambda: nn.RNNCell(0, 5), ("RNNCell: in_dims must be a positive int", "0")),
    (lambda: nn.LSTMCell(3, 5, init_bias=(jnp.zeros,) * 3),
     ("LSTMCell: init_bias", "a tuple of 4")),
    (lambda: nn.Recurrence(nn.Dense(3, 5)), ("Recurrence: cell must be a recurrent cell", "Dense")),
    (lambda: nn.Recurrence(nn.GRUCell(3, 5), ordering="time"), ("ordering must be",)),
    (lambda: nn.BidirectionalRNN(nn.GRUCell(3, 5), merge_mode="sum"), ("merge_mode",)),
])
def test_bad_configuration_is_one_line_at_construction(build, parts):
    with pytest.raises((ValueError, TypeError)) as e:
        build()
    _one_line(e, *parts)


def test_a_recurrence_rejects_an_input_it_cannot_read():
    rnn = nn.Recurrence(nn.RNNCell(3, 5))
    ps, st = luxc.setup(0, rnn)
    with pytest.raises(nn.LayerShapeError) as e:
        rnn(jnp.zeros((2, 0, 3)), ps, st)
    _one_line(e, "0 time steps")
    with pytest.raises(nn.LayerShapeError) as e:
        rnn(jnp.zeros((2, 2, 2, 3)), ps, st)
    _one_line(e, "(batch, time, features)", "(2, 2, 2, 3)")


# --- Recurrence ------------------------------------------------------------------------------

def _loop(cell, xs, ps, st):
    """Lux's Recurrence, written as its Python loop over (batch, time, in)."""
    (y, carry), st = cell(xs[:, 0], ps, st)
    ys = [y]
    for t in range(1, xs.shape[1]):
        (y, carry), st = cell((xs[:, t], carry), ps, st)
        ys.append(y)
    return jnp.stack(ys, 1), st


CELLS = [lambda: nn.RNNCell(3, 5, train_state=True), lambda: nn.LSTMCell(3, 5, train_memory=True),
         lambda: nn.GRUCell(3, 5)]


@pytest.mark.parametrize("make", CELLS)
def test_recurrence_equals_the_loop_of_its_cell_in_every_ordering_and_input_form(make):
    cell = make()
    ps, st = luxc.setup(0, cell)
    ys_ref, st_ref = _loop(cell, SEQ, ps, st)
    last, st1 = nn.Recurrence(cell)(SEQ, ps, st)
    np.testing.assert_allclose(last, ys_ref[:, -1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(st1["rng"], st_ref["rng"])
    seq, _ = nn.Recurrence(cell, return_sequence=True)(SEQ, ps, st)
    np.testing.assert_allclose(seq, ys_ref, rtol=1e-5, atol=1e-6)
    time_major = nn.Recurrence(cell, ordering=TimeLastIndex(), return_sequence=True)
    seq_t, _ = time_major(np.swapaxes(SEQ, 0, 1), ps, st)
    np.testing.assert_allclose(seq_t, np.swapaxes(ys_ref, 0, 1), rtol=1e-5, atol=1e-6)
    steps = [SEQ[:, t] for t in range(6)]
    listed, _ = nn.Recurrence(cell, return_sequence=True)(steps, ps, st)
    assert isinstance(listed, list) and len(listed) == 6
    np.testing.assert_allclose(listed[2], ys_ref[:, 2], rtol=1e-5, atol=1e-6)
    one, _ = nn.Recurrence(cell, return_sequence=True)(SEQ[0], ps, st)  # (time, in)
    np.testing.assert_allclose(one, ys_ref[0], rtol=1e-5, atol=1e-6)


def test_recurrence_ordering_gives_luxs_values_issue_302():
    # test/recurrent_layers/recurrence_ordering_tests.jl: h_t = x_t + h_{t-1}.
    ones = lambda k, s, d: jnp.ones(s, d)
    zeros = lambda k, s, d: jnp.zeros(s, d)
    enc = nn.Recurrence(nn.RNNCell(1, 1, None, init_weight=ones, init_bias=zeros,
                                   init_state=zeros), return_sequence=True)
    ps, st = luxc.setup(0, enc)
    res, _ = enc(jnp.array([0.5, 0.0, 0.7, 0.8]).reshape(1, 4, 1), ps, st)
    np.testing.assert_allclose(res.ravel(), [0.5, 0.5, 1.2, 2.0], rtol=1e-6)


def test_recurrence_gradient_matches_finite_differences():
    rnn = nn.Recurrence(nn.GRUCell(3, 4, train_state=True), return_sequence=True)
    ps, st = luxc.setup(5, rnn)
    # compiled once each: op by op, every call would compile the scan again
    loss = jax.jit(lambda p: jnp.sum(jnp.sin(rnn(SEQ, p, st)[0])))
    grads = jax.jit(jax.grad(loss))(ps)
    direction = jax.tree.map(lambda v: jnp.asarray(RNG.normal(size=v.shape), v.dtype), ps)
    eps = 1e-3
    shifted = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, ps, direction)
    fd = (loss(shifted(1)) - loss(shifted(-1))) / (2 * eps)
    ad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose(fd, ad, rtol=1e-2)


def _digits_blind(text):
    return re.sub(r"\d+", "N", text)


def test_the_compiled_step_holds_the_cell_once_whatever_the_number_of_steps():
    def traced(t):
        model = nn.Chain(nn.Recurrence(nn.LSTMCell(3, 8)), nn.Dense(8, 1))
        ps, st = luxc.setup(0, model)
        ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
        data = (jnp.ones((2, t, 3)), jnp.zeros((2, 1)))
        return luxc.compile_step(luxc.MSELoss(), data, ts).as_text("traced")

    short, long = traced(4), traced(64)
    assert "stablehlo.while" in short
    assert _digits_blind(short) == _digits_blind(long)
    # Only the shape digits differ (4 → 64: one more character each); unrolled, 16× the text.
    assert len(long) - len(short) < 0.01 * len(short)


# --- StatefulRecurrentCell, BidirectionalRNN, ReverseSequence ----------------------------------

def test_stateful_recurrent_cell_keeps_its_carry_until_reset():
    # statefulrecurrentcell_tests.jl: st.carry is nothing, then set; update_state resets it.
    cell = nn.LSTMCell(3, 5)
    layer = nn.StatefulRecurrentCell(cell)
    ps, st = luxc.setup(0, layer)
    assert st["carry"] is None
    y1, st1 = layer(X, ps, st)
    y2, st2 = layer(X, ps, st1)
    (r1, c1), _ = cell(X, ps, st["cell"])
    (r2, _), _ = cell((X, c1), ps, st["cell"])
    np.testing.assert_allclose(y1, r1, rtol=1e-6)
    np.testing.assert_allclose(y2, r2, rtol=1e-6)
    reset = nn.update_state(st2, "carry", None)
    assert reset["carry"] is None
    np.testing.assert_allclose(layer(X, ps, reset)[0], r1, rtol=1e-6)


@pytest.mark.parametrize("ordering", [BatchLastIndex(), TimeLastIndex()])
def test_bidirectional_is_forward_and_time_reversed_backward_concatenated(ordering):
    bi = nn.BidirectionalRNN(nn.LSTMCell(3, 5), nn.GRUCell(3, 4), ordering=ordering)
    ps, st = luxc.setup(0, bi)
    assert set(ps) == {"forward_rnn", "backward_rnn"}
    assert set(ps["backward_rnn"]) == {"rev1", "rnn", "rev2"}
    x = SEQ if isinstance(ordering, BatchLastIndex) else np.swapaxes(SEQ, 0, 1)
    y, _ = bi(x, ps, st)
    fwd, _ = _loop(bi.forward.cell, SEQ, ps["forward_rnn"], st["forward_rnn"])
    back_cell = bi.backward.layers["rnn"].cell
    bwd, _ = _loop(back_cell, SEQ[:, ::-1], ps["backward_rnn"]["rnn"], st["backward_rnn"]["rnn"])
    expected = np.concatenate([fwd, bwd[:, ::-1]], -1)  # (batch, time, 5 + 4)
    if isinstance(ordering, TimeLastIndex):
        expected = np.swapaxes(expected, 0, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    (yf, yb), _ = nn.BidirectionalRNN(bi.forward.cell, back_cell, merge_mode=None,
                                      ordering=ordering)(x, ps, st)
    np.testing.assert_allclose(np.concatenate([yf, yb], -1), y, rtol=1e-6)


def test_bidirectional_with_one_cell_gives_the_backward_copy_its_own_parameters():
    # bidirectional_tests.jl: size(y) == (4,) steps of (10, 2) for RNNCell(3 => 5).
    bi = nn.BidirectionalRNN(nn.RNNCell(3, 5))
    ps, st = luxc.setup(0, bi)
    assert luxc.parameter_count(bi) == 2 * luxc.parameter_count(nn.RNNCell(3, 5))
    assert not np.allclose(ps["forward_rnn"]["weight_ih"], ps["backward_rnn"]["rnn"]["weight_ih"])
    assert bi(jnp.ones((2, 4, 3)), ps, st)[0].shape == (2, 4, 10)
    ys, _ = bi([jnp.ones((2, 3))] * 4, ps, st)
    assert len(ys) == 4 and ys[0].shape == (2, 10)


def test_reverse_sequence_reverses_luxs_default_axis_or_the_given_one():
    # basic.jl: dim=nothing reverses Julia's dim max(ndims-1, 1): a vector itself, else luxc
    # axis 1 (the time axis of (batch, time, features)).
    rev = nn.ReverseSequence()
    np.testing.assert_array_equal(rev(jnp.array([1.0, 2.0, 3.0]), {}, {})[0], [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(rev(SEQ, {}, {})[0], SEQ[:, ::-1])
    np.testing.assert_array_equal(nn.ReverseSequence(0)(SEQ, {}, {})[0], SEQ[::-1])
    assert rev([1, 2], {}, {})[0] == [2, 1]
    assert nn.TimeLastIndex is luxc.ops.TimeLastIndex  # Lux exports the orderings with the layers
    with pytest.raises(nn.LayerShapeError) as e:
        nn.ReverseSequence(3)(SEQ, {}, {})
    _one_line(e, "dim 3", "(2, 6, 3)")


# --- the family end to end -------------------------------------------------------------------

def _model():
    return nn.Chain(nn.Recurrence(nn.GRUCell(3, 6), return_sequence=True),
                    nn.Stack(nn.Recurrence(nn.RNNCell(6, 6), return_sequence=True), 2),
                    nn.BidirectionalRNN(nn.LSTMCell(6, 4)),
                    nn.Recurrence(nn.LSTMCell(8, 4)), nn.Dense(4, 2))


def _objective(model, ps, st, data):
    y, st = model(data[0], ps, st)
    return jnp.mean((y - data[1]) ** 2), st, {}


DATA = (jnp.asarray(SEQ), jnp.asarray(RNG.normal(size=(2, 2)), jnp.float32))
STEPS = 2  # the second step's loss and the parameters after it see the first update


def _train(backend, ts, steps=STEPS, **kw):
    losses = []
    for _ in range(steps):
        _, loss, _, ts = luxc.training.single_train_step(backend, _objective, DATA, ts, **kw)
        losses.append(float(loss))
    return losses, ts


@pytest.fixture(scope="module")
def family():
    """The family's initial TrainState and its eager (AutoJAX) run, once for the module: op by
    op, each step compiles every scan again (about 4 s a step)."""
    model = _model()
    ps, st = luxc.setup(0, model)
    start = luxc.TrainState(model, ps, st, optax.adam(1e-2))
    return start, _train(luxc.AutoJAX(), start)


def test_the_family_trains_compiled_as_eager_in_bf16_and_through_a_checkpoint(tmp_path, family):
    start, (eager, ts_e) = family
    compiled, ts_c = _train(luxc.AutoXLA(), start)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    assert compiled[-1] < compiled[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                 ts_e.parameters, ts_c.parameters)
    bf16, _ = _train(luxc.AutoXLA(), start,
                     compile_options=luxc.CompileOptions(mixed_precision="bf16"))
    assert np.all(np.isfinite(bf16)) and abs(bf16[0] - eager[0]) < 0.05 * eager[0] + 0.05
    luxc.save_state(tmp_path / "s.safetensors", ts_c)
    # `start` holds the initial values (a load that kept them would fail) and shares ts_c's
    # compiled step: the resumed step needs no second compile.
    resumed = luxc.load_state(tmp_path / "s.safetensors", like=start)
    a, b = _train(luxc.AutoXLA(), ts_c, 1)[0], _train(luxc.AutoXLA(), resumed, 1)[0]
    assert a == b


def test_an_artifact_of_a_recurrent_model_runs_without_its_source(tmp_path, family):
    # Exported here, run by `luxc run` in a fresh process that cannot import this module.
    start, (eager, _) = family
    luxc.export_step(_objective, DATA, start, tmp_path / "step.luxc")
    r = luxc_cli("run", "step.luxc", "--steps", STEPS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    losses = [float(line.split("loss")[1]) for line in r.stdout.splitlines()
              if line.startswith("step ")]
    np.testing.assert_allclose(losses, eager, rtol=1e-4)
