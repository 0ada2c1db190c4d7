"""A scan's stacked buffers kept between calls (runtime/compiling/_scan_buffers.py,
_workspace.py): which loops qualify (golden StableHLO), and compiled steps that keep their
buffers computing the same bits as the steps that zero-fill them every call."""

import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxlib.mlir import ir

import luxc
from luxc.runtime._jax_internal import ir_context
from luxc.runtime.compiling import _workspace
from luxc.runtime.compiling._executable import DonationWarning, build
from luxc.runtime.compiling._scan_buffers import ScanBuffer, lift_scan_buffers
from tests.runtime._random import normal

# One loop writing x into row `index` of a 3x4 buffer a turn, as jax lowers lax.scan's stacked
# output (the write in a function of its own: jax's dynamic_update_index_in_dim); main returns
# `result`.
_LOOP = """
func.func private @write_row(%buf: tensor<{rows}x4xf32>, %row: tensor<4xf32>, %idx: tensor<i32>) -> tensor<{rows}x4xf32> {{
  %c = stablehlo.constant dense<{col}> : tensor<i32>
  %u = stablehlo.broadcast_in_dim %row, dims = [1] : (tensor<4xf32>) -> tensor<{depth}x4xf32>
  %w = stablehlo.dynamic_update_slice %buf, %u, %idx, %c : (tensor<{rows}x4xf32>, tensor<{depth}x4xf32>, tensor<i32>, tensor<i32>) -> tensor<{rows}x4xf32>
  return %w : tensor<{rows}x4xf32>
}}
func.func @main(%x: tensor<4xf32>) -> tensor<{rows}x4xf32> {{
  %z = stablehlo.constant dense<0.0> : tensor<f32>
  %start = stablehlo.constant dense<{start}> : tensor<i32>
  %n = stablehlo.constant dense<{bound}> : tensor<i32>
  %step = stablehlo.constant dense<{step}> : tensor<i32>
  %one = stablehlo.constant dense<1> : tensor<i32>
  %b = stablehlo.broadcast_in_dim %z, dims = [] : (tensor<f32>) -> tensor<{rows}x4xf32>
  %r:2 = stablehlo.while(%i = %start, %buf = %b) : tensor<i32>, tensor<{rows}x4xf32>
  cond {{
    %p = stablehlo.compare {direction}, %i, %n, SIGNED : (tensor<i32>, tensor<i32>) -> tensor<i1>
    stablehlo.return %p : tensor<i1>
  }} do {{
    %back = stablehlo.subtract %n, %i : tensor<i32>
    %reverse = stablehlo.subtract %back, %one : tensor<i32>
    %double = stablehlo.add %i, %i : tensor<i32>
    {read}
    %w = func.call @write_row(%buf, %x, {index}) : (tensor<{rows}x4xf32>, tensor<4xf32>, tensor<i32>) -> tensor<{rows}x4xf32>
    {after}
    %i2 = stablehlo.add %i, %step : tensor<i32>
    stablehlo.return %i2, %w : tensor<i32>, tensor<{rows}x4xf32>
  }}
  %twice = stablehlo.add %r#1, %r#1 : tensor<{rows}x4xf32>
  return {result} : tensor<{rows}x4xf32>
}}"""

_PLAIN = dict(rows=3, depth=1, col=0, start=0, bound=3, step=1, direction="LT", index="%i", read="",
              after="", result="%twice")
_SUM = ("stablehlo.reduce({0} init: %z) applies stablehlo.add across dimensions = [0, 1] : "
        "(tensor<3x4xf32>, tensor<f32>) -> tensor<f32>")


def _lift(**change):
    with ir_context():
        module = ir.Module.parse(_LOOP.format(**{**_PLAIN, **change}))
        lifted = lift_scan_buffers(module)
        module.operation.verify()
        return lifted, str(module).split("func.func @main")[1]


@pytest.mark.parametrize("index", ["%i", "%reverse"])
def test_a_loop_writing_row_i_or_row_n_minus_1_minus_i_takes_its_buffer_as_an_argument(index):
    lifted, main = _lift(index=index)
    assert lifted == [ScanBuffer((3, 4), "f32")]
    signature, *body = main.splitlines()
    assert signature.startswith("(%arg0: tensor<4xf32>, %arg1: tensor<3x4xf32>) -> "
                                "(tensor<3x4xf32>, tensor<3x4xf32>)")
    loop = next(line for line in body if "stablehlo.while" in line)
    assert "= %arg1)" in loop
    assert not any("broadcast_in_dim" in line and "tensor<3x4xf32>" in line for line in body)
    # The loop's final buffer is the new last result.
    (ret,) = [line.strip() for line in body if line.strip().startswith("return ")]
    assert ret.split(" : ")[0].endswith(", %0#1")


@pytest.mark.parametrize("change, why", [
    ({"start": 1}, "the first turn would skip row 0"),
    ({"bound": 2}, "two turns leave row 2 as it was"),
    ({"step": 2}, "every other row"),
    ({"direction": "LE"}, "a turn past the end"),
    ({"index": "%double"}, "row 2i is not every row"),
    ({"index": "%back"}, "row n - i: off by one"),
    ({"depth": 2}, "a two-row update is not one row a turn"),
    ({"col": 1}, "an update at column 1 is not the whole row"),
    ({"read": "%seen = " + _SUM.format("%buf")}, "the body reads it"),
    ({"after": "%seen = " + _SUM.format("%w")}, "the body reads it after the turn's write"),
    ({"result": "%r#1"}, "main already returns the buffer"),
])
def test_loops_that_may_leave_or_read_a_row_keep_their_zeros(change, why):
    lifted, main = _lift(**change)
    assert lifted == [], why
    assert main.startswith("(%arg0: tensor<4xf32>) -> tensor<3x4xf32>")


@pytest.fixture
def every_size(monkeypatch):
    # The steps below are small; by default buffers under MIN_BYTES are left to XLA.
    monkeypatch.setattr(_workspace, "MIN_BYTES", 0)


def test_buffers_under_the_size_floor_are_left_to_xla():
    text = _LOOP.format(**_PLAIN)  # one 3x4 f32 buffer: 48 bytes
    with ir_context():
        assert lift_scan_buffers(ir.Module.parse(text), min_bytes=49) == []
        assert len(lift_scan_buffers(ir.Module.parse(text), min_bytes=48)) == 1
    assert build(_scan_fn, _scan_args()).workspace == ()  # 80 bytes, under the default floor
    rows = _workspace.MIN_BYTES // 4 // 64
    big = (normal(0, (64, 64)), normal(1, (rows, 64)))
    exe = build(_scan_fn, big)
    assert [a.shape for a in exe.workspace] == [(rows, 64)]
    np.testing.assert_array_equal(exe.call(*big), jax.jit(_scan_fn)(*big))


def _scan_fn(w, xs):
    def turn(c, x):
        c = jnp.tanh(c @ w + x)
        return c, c * 2.0

    c, ys = jax.lax.scan(turn, jnp.zeros(w.shape[0]), xs)
    return jnp.sum(ys * ys, axis=1) + jnp.sum(c)


def _scan_args(seed=0):
    return normal(2 * seed, (4, 4)), normal(2 * seed + 1, (5, 4))


@pytest.mark.usefixtures("every_size")
def test_a_compiled_scan_reuses_its_buffer_and_computes_what_jit_computes():
    args = _scan_args()
    exe = build(_scan_fn, args)
    assert [(a.shape, a.dtype) for a in exe.workspace] == [((5, 4), jnp.float32)]
    entry = exe.compiled.as_text().split("ENTRY")[1].splitlines()
    assert not [line for line in entry if " = f32[5,4]" in line and "broadcast" in line]
    expected = jax.jit(_scan_fn)
    for seed in range(3):  # later calls get the buffer the last one left full of its rows
        args = _scan_args(seed)
        np.testing.assert_array_equal(exe.call(*args), expected(*args))


@pytest.mark.usefixtures("every_size")
def test_a_refused_call_keeps_the_buffers_for_the_next():
    args = _scan_args()
    exe = build(_scan_fn, args)
    with pytest.raises(TypeError):
        exe.call(jnp.ones((3, 3)), args[1])
    np.testing.assert_array_equal(exe.call(*args), jax.jit(_scan_fn)(*args))


@pytest.mark.usefixtures("every_size")
def test_calls_from_several_threads_each_get_their_own_buffers():
    exe = build(_scan_fn, _scan_args())
    inputs = [_scan_args(seed) for seed in range(4)]
    expected = [np.asarray(jax.jit(_scan_fn)(*a)) for a in inputs]
    got: dict[int, list] = {i: [] for i in range(4)}

    def worker(i):
        for _ in range(5):
            got[i].append(np.asarray(exe.call(*inputs[i])))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        for out in got[i]:
            np.testing.assert_array_equal(out, expected[i])


def _stack_run(monkeypatch, lifted: bool, mixed_precision, donate: bool):
    monkeypatch.setattr(_workspace, "ENABLED", lifted)
    monkeypatch.setattr(_workspace, "MIN_BYTES", 0)
    model = luxc.nn.Stack(luxc.nn.Chain(luxc.nn.Dense(16, 32, jax.nn.gelu), luxc.nn.Dense(32, 16)), 3)
    return four_steps(model, mixed_precision, donate)


# The steps' optimiser: a state per parameter, updated in place, and less to compile than Adam's.
MOMENTUM = optax.sgd(1e-2, momentum=0.9)


def four_steps(model, mixed_precision, donate=True):
    """A compiled step of ``model`` (16 features in and out) and four steps of it: the step,
    the losses, the parameters after."""
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, MOMENTUM)
    x = normal(1, (8, 16))
    data = (x, jnp.tanh(x))
    cs = luxc.compile_step(luxc.MSELoss(), data, ts, return_gradients=False, donate=donate,
                           compile_options=luxc.CompileOptions(mixed_precision=mixed_precision))
    losses = []
    for _ in range(4):
        _, loss, _, ts = cs(ts, data)
        losses.append(float(loss))
    return cs, losses, [np.asarray(a, np.float32) for a in jax.tree.leaves(ts.parameters)]


@pytest.fixture(scope="module")
def zero_filled():
    """The losses and parameters of four steps that zero-fill their buffers every call, by mixed
    precision, each computed once: the reference of the donating and of the non-donating steps
    that keep their buffers (donation changes no bit of these steps' results)."""
    runs = {}

    def run(mixed_precision):
        if mixed_precision not in runs:
            with pytest.MonkeyPatch.context() as patch:
                runs[mixed_precision] = _stack_run(patch, False, mixed_precision, True)[1:]
        return runs[mixed_precision]

    return run


@pytest.mark.parametrize("mixed_precision", [None, "bf16"])
@pytest.mark.parametrize("donate", [True, False])
def test_a_stack_step_keeps_its_scan_buffers_and_its_bits(monkeypatch, zero_filled, mixed_precision,
                                                          donate):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DonationWarning)
        cs, losses, params = _stack_run(monkeypatch, True, mixed_precision, donate)
    # The forward scan's residual stacks and the backward scan's weight-gradient stacks (4);
    # in bf16 one stack fewer: the Stack's "nothing_saveable" keeps no product's output.
    assert len(cs.executable.workspace) == (6 if mixed_precision is None else 5)
    ref_losses, ref_params = zero_filled(mixed_precision)
    assert losses == ref_losses
    for a, b in zip(params, ref_params, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.usefixtures("every_size")
def test_gradients_a_step_returns_are_not_kept_between_calls():
    model = luxc.nn.Stack(luxc.nn.Dense(4, 4, jax.nn.tanh), 3)
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    x = jnp.ones((2, 4))
    cs = luxc.compile_step(luxc.MSELoss(), (x, x), ts, return_gradients=True)
    # Only the forward scan's residuals: the gradient stacks are the step's own results.
    shapes = [a.shape for a in cs.executable.workspace]
    assert shapes and set(shapes) == {(3, 2, 4)}
    grads, *_ = cs(ts, (x, x))
    grads_again, *_ = cs(ts, (x, x))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_profile_of_a_step_that_keeps_its_buffers_has_no_zero_fill(monkeypatch):
    cs, _, _ = _stack_run(monkeypatch, True, None, True)
    model = cs.executable
    assert model.workspace
    x = normal(1, (8, 16))
    stack = luxc.nn.Stack(luxc.nn.Chain(luxc.nn.Dense(16, 32, jax.nn.gelu), luxc.nn.Dense(32, 16)), 3)
    ps, st = luxc.setup(0, stack)
    ts = luxc.TrainState(stack, ps, st, MOMENTUM)
    records = cs.profile(ts, (x, jnp.tanh(x)), steps=3)
    assert records and any(r.kind == "while" for r in records)
    assert not any("broadcast" in r.kind and "3,8,32" in r.shape for r in records)


def test_a_direct_write_whose_result_is_read_keeps_its_zeros():
    # The write inlined in the loop (no function call); then the whole buffer read after it:
    # the rows later turns write would be seen.
    call = ("%w = func.call @write_row(%buf, %x, %i) : (tensor<3x4xf32>, tensor<4xf32>, "
            "tensor<i32>) -> tensor<3x4xf32>")
    inline = ("%c = stablehlo.constant dense<0> : tensor<i32>\n"
              "    %u = stablehlo.broadcast_in_dim %x, dims = [1] : (tensor<4xf32>) -> tensor<1x4xf32>\n"
              "    %w = stablehlo.dynamic_update_slice %buf, %u, %i, %c : (tensor<3x4xf32>, "
              "tensor<1x4xf32>, tensor<i32>, tensor<i32>) -> tensor<3x4xf32>")
    for after, lifted in (("", 1), ("%seen = " + _SUM.format("%w"), 0)):
        text = _LOOP.format(**{**_PLAIN, "after": after})
        assert call in text
        with ir_context():
            module = ir.Module.parse(text.replace(call, inline))
            assert "func.call" not in str(module).split("func.func @main")[1]
            assert len(lift_scan_buffers(module)) == lifted


def test_a_one_turn_loop_is_left_to_xla():
    # XLA removes a one-turn loop and its zeros itself; an argument would only move its fusions.
    with ir_context():
        for rows, lifted in ((1, 0), (2, 1)):
            text = _LOOP.format(**{**_PLAIN, "rows": rows, "bound": rows})
            assert len(lift_scan_buffers(ir.Module.parse(text))) == lifted


class _TakenList(list):
    """A list another thread empties between the check and the pop."""

    def __bool__(self):
        return True

    def pop(self, *args):
        raise IndexError("pop from empty list")


@pytest.mark.usefixtures("every_size")
def test_a_call_whose_kept_buffers_another_thread_took_makes_its_own():
    args = _scan_args()
    exe = build(_scan_fn, args)
    exe.call._spare = _TakenList()
    np.testing.assert_array_equal(exe.call(*args), jax.jit(_scan_fn)(*args))


def test_a_loop_carrying_a_token_is_read_with_a_size_floor():
    # A carry that is not a tensor (an effects token) has no size: it is never a buffer.
    text = """
func.func @main(%x: tensor<4xf32>) -> tensor<f32> {
  %t = stablehlo.after_all : !stablehlo.token
  %zero = stablehlo.constant dense<0> : tensor<i32>
  %n = stablehlo.constant dense<3> : tensor<i32>
  %r:2 = stablehlo.while(%i = %zero, %tok = %t) : tensor<i32>, !stablehlo.token
  cond {
    %p = stablehlo.compare LT, %i, %n, SIGNED : (tensor<i32>, tensor<i32>) -> tensor<i1>
    stablehlo.return %p : tensor<i1>
  } do {
    %one = stablehlo.constant dense<1> : tensor<i32>
    %i2 = stablehlo.add %i, %one : tensor<i32>
    stablehlo.return %i2, %tok : tensor<i32>, !stablehlo.token
  }
  %s = stablehlo.constant dense<0.0> : tensor<f32>
  return %s : tensor<f32>
}"""
    with ir_context():
        assert lift_scan_buffers(ir.Module.parse(text), min_bytes=1 << 18) == []


class _FailedBuffer:
    """A kept buffer whose call failed after it returned (its input's own computation failed
    asynchronously): written, and carrying the error."""

    def is_ready(self):
        return True

    def is_deleted(self):
        return False

    def block_until_ready(self):
        raise RuntimeError("INTERNAL: CpuCallback error: boom")


class _PendingBuffer(_FailedBuffer):
    """A kept buffer its call is still writing: asking it whether it failed would wait."""

    def is_ready(self):
        return False


@pytest.mark.usefixtures("every_size")
def test_buffers_a_failed_call_left_are_replaced_and_the_next_calls_succeed():
    # An adversary's finding (2026-12-06): a call given an input whose own computation failed
    # returned, kept its poisoned buffers, and every later call failed with the same error.
    args = _scan_args()
    exe = build(_scan_fn, args)
    exe.call._spare = [(_FailedBuffer(),)]
    np.testing.assert_array_equal(exe.call(*args), jax.jit(_scan_fn)(*args))
    kept = exe.call._spare[0]
    assert all(isinstance(b, jax.Array) for b in kept)  # fresh, then the call's own
    # Buffers still being written are passed on as they are: checking them would wait.
    seen = []
    exe.call._call = lambda *a: seen.append(a[-1]) or ((), a[-1])
    exe.call._spare = [(_PendingBuffer(),)]
    exe.call(*args)
    assert isinstance(seen[0][0], _PendingBuffer)


@pytest.mark.usefixtures("every_size")
def test_a_complex_stack_keeps_its_buffer_and_the_scan_keeps_its_own():
    # An adversary's finding: a buffer of a dtype the workspace could not make (complex64) had
    # turned every buffer of the step back to XLA's temporaries.
    def fn(w, xs, a, b):
        c, ys = jax.lax.scan(lambda c, x: (jnp.tanh(c @ w + x),) * 2, jnp.zeros(4), xs)
        s = jnp.stack([a, b * 1j])
        h, zs = jax.lax.scan(lambda h, v: (h * v + 1, jnp.sum(jnp.abs(v))),
                             jnp.ones(a.shape, jnp.complex64), s)
        return jnp.sum(ys * ys, axis=1) + jnp.sum(c), jnp.abs(h), zs

    def make(seed):
        w, xs = _scan_args(seed)
        a = (normal(seed + 10, (3, 3)) + 0.5j).astype(jnp.complex64)
        return w, xs, a, (a * 0.5).astype(jnp.complex64)

    exe = build(fn, make(0))
    assert {(a.shape, np.dtype(a.dtype)) for a in exe.workspace} == {
        ((5, 4), np.dtype(np.float32)), ((2, 3, 3), np.dtype(np.complex64))}
    for seed in range(3):
        for got, want in zip(exe.call(*make(seed)), jax.jit(fn)(*make(seed)), strict=True):
            np.testing.assert_array_equal(got, want)
