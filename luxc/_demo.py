"""``luxc demo``: fit y = 2x - x³ with a small MLP (the regression example of Lux.jl's training
documentation, ``examples/regression.py``) using the compiled step, and show what happened: the
model, the pass report, compile and step times, the loss curve."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import jax
import plotext

import luxc
from luxc.examples import regression
from luxc.training import single_train_step_


def _loss_curve(losses: list[float]) -> str:
    plotext.clear_figure()
    steps = len(losses)
    plotext.plot(list(range(1, steps + 1)), losses, marker="braille")
    plotext.yscale("log")
    # Whole steps on x; powers of ten on y (plotext's default labels are fractional steps and
    # fixed-point numbers that print 2.6e-6 as 0.000003).
    plotext.xticks(sorted({1, *range(0, steps + 1, max(1, steps // 4))} - {0}))
    decades = [10.0**k for k in range(math.floor(math.log10(max(min(losses), 1e-30))),
                                      math.ceil(math.log10(max(losses))) + 1)]
    plotext.yticks(decades, [f"{d:.0e}" for d in decades])
    plotext.title("training loss (MSE, log scale)")
    plotext.xlabel("step")
    plotext.plotsize(72, 16)
    plotext.theme("clear")
    return plotext.build()


def _report(cs: luxc.CompiledStep) -> list[str]:
    if not cs.pass_report:
        return ["    (no passes)"]
    return [f"    {r.name:<22} {r.rewrites:3d} rewrites   {r.ops_before} -> {r.ops_after} ops"
            for r in cs.pass_report]


def run_demo(steps: int, echo: Callable[[str], None] = print) -> list[float]:
    loss_fn, data, ts = regression.factory()
    platform = jax.default_backend()
    echo(f"luxc {luxc.__version__} on {platform} (jax {jax.__version__})\n")
    echo(repr(ts.model) + "\n")

    t0 = time.perf_counter()
    cs = luxc.compile_step(loss_fn, data, ts, donate=True, return_gradients=False)
    wall = time.perf_counter() - t0
    pipeline = ", ".join(luxc.passes.default_pipeline(platform)) or "empty"
    echo(f"compiled the whole step (MSE + gradient + Adam) into one XLA executable in {wall:.2f}s "
         f"(trace + passes {cs.trace_seconds:.2f}s, XLA {cs.compile_seconds:.2f}s)")
    echo(f"pass report, default pipeline on {platform} ({pipeline}; only passes measured "
         f"faster on {platform} are in it):")
    for line in _report(cs):
        echo(line)
    every = luxc.compile_step(loss_fn, data, ts.replace(cache=luxc.runtime.ExecutableCache()),
                              compile_options=luxc.CompileOptions(passes="all"))
    echo("what every pass would rewrite on this step (`luxc passes` lists them):")
    for line in _report(every):
        echo(line)

    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        _, loss, _, ts = single_train_step_(luxc.AutoXLA(), loss_fn, data, ts,
                                            return_gradients=False)
        losses.append(loss)
    jax.block_until_ready(losses[-1])
    compiled_step = (time.perf_counter() - t0) / steps
    losses = [float(x) for x in losses]

    eager = luxc.TrainState(ts.model, ts.parameters, ts.states, ts.optimizer)
    n_eager = 10
    _, loss, _, eager = luxc.training.single_train_step(luxc.AutoJAX(), loss_fn, data, eager)
    t0 = time.perf_counter()
    for _ in range(n_eager):
        _, loss, _, eager = luxc.training.single_train_step(luxc.AutoJAX(), loss_fn, data, eager)
    jax.block_until_ready(loss)
    eager_step = (time.perf_counter() - t0) / n_eager

    echo("\n" + _loss_curve(losses))
    echo(f"\nloss {losses[0]:.3g} -> {losses[-1]:.3g} in {steps} steps "
         f"({losses[0] / max(losses[-1], 1e-12):.0f}x lower)")
    echo(f"step time: AutoXLA {compiled_step * 1e6:.0f} µs/step, AutoJAX (op by op) "
         f"{eager_step * 1e6:.0f} µs/step: {eager_step / compiled_step:.0f}x faster compiled")
    echo(f"cache: {luxc.cache_info(ts)}")
    return losses
