"""A LeNet-5 step (batch 16) compiled once per pipeline and precision in a test process.

Several pass tests compare the step of the CPU default pipeline with the step less their pass;
they share the default's compile (2-3 s of CPU each) instead of repeating it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc.examples.lenet import make_model
from tests.passes._inputs import normal


@functools.cache
def lenet_step(passes: str | tuple[str, ...], mixed_precision: str | None):
    """The outputs ``(grads, loss, stats, train_state)`` of LeNet-5's first step (batch 16)
    compiled with ``passes`` (a keyword or a tuple of pass names), and its pass report as
    ``{name: rewrites}``. Cached: treat both as read-only."""
    model = make_model()
    ps, st = luxc.setup(0, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    labels = np.random.default_rng(1).integers(0, 10, 16)
    data = (normal(0, (16, 28, 28, 1)), jnp.asarray(np.eye(10, dtype=np.float32)[labels]))
    cs = luxc.compile_step(luxc.CrossEntropyLoss(logits=True), data, ts,
                           compile_options=luxc.CompileOptions(passes=passes,
                                                               mixed_precision=mixed_precision))
    return cs(ts, data), {r.name: r.rewrites for r in cs.pass_report}


def lenet_bits_without(pass_name: str, mixed_precision: str | None = None) -> int:
    """Assert LeNet-5's step with the CPU default pipeline and with it less ``pass_name`` give
    bit-identical outputs; return the pass's rewrites in the default pipeline."""
    default, report = lenet_step("default", mixed_precision)
    without = tuple(p for p in luxc.passes.default_pipeline("cpu") if p != pass_name)
    outputs, report_without = lenet_step(without, mixed_precision)
    assert pass_name not in report_without
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(outputs), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    return report[pass_name]
