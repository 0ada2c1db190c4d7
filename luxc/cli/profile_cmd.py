"""``luxc profile``: time a step (from a SPEC or an artefact) with ``sync=True``."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click

from luxc.cli._common import (
    call_factory,
    compile_options,
    format_bytes,
    load_artifact,
    passes_option,
    peak_bytes,
    precision_option,
    xla_option,
)


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _profile_spec(spec, steps, options, trace):
    import tempfile

    import jax

    import luxc
    from luxc.runtime import persistent_cache

    obj, data, ts = call_factory(spec)
    # Cold and warm compiles in a cache of its own: the user's cache is neither read, written
    # nor reconfigured.
    with tempfile.TemporaryDirectory(prefix="luxc-profile-cache-") as cache_dir, \
            persistent_cache.using(cache_dir):
        t0 = time.perf_counter()
        cs = luxc.compile_step(obj, data, ts, compile_options=options, donate=True)
        cold = time.perf_counter() - t0
        jax.clear_caches()
        ts_warm = ts.replace(cache=luxc.runtime.ExecutableCache())
        t0 = time.perf_counter()
        luxc.compile_step(obj, data, ts_warm, compile_options=options, donate=True)
        warm = time.perf_counter() - t0
    times = []

    def one(ts):
        t = time.perf_counter()
        _, _, _, ts = cs(ts, data, sync=True)
        times.append(time.perf_counter() - t)
        return ts

    ts = one(ts)  # the first call also allocates: not a step time
    times.clear()
    if trace:
        with jax.profiler.trace(trace):
            for _ in range(steps):
                ts = one(ts)
    else:
        for _ in range(steps):
            ts = one(ts)
    return cold, warm, times, cs.cost_analysis(), cs.memory_stats()


def _profile_dir(directory, steps, trace):
    import jax

    t0 = time.perf_counter()
    loaded = load_artifact(directory)
    cold = time.perf_counter() - t0
    state, data, times = loaded.state, loaded.data, []
    state, _, _ = loaded(state, data)
    jax.block_until_ready(state)
    ctx = jax.profiler.trace(trace) if trace else None
    if ctx:
        ctx.__enter__()
    try:
        for _ in range(steps):
            t = time.perf_counter()
            state, loss, _ = loaded(state, data)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t)
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
    return cold, None, times, loaded.cost_analysis(), loaded.memory_stats()


@click.command()
@click.argument("target")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--trace", type=click.Path(file_okay=False), help="write a jax profiler trace here")
@passes_option
@precision_option
@xla_option
def profile(target, steps, trace, passes, precision, xla_option):
    """Time the step of TARGET (a SPEC or an artefact directory) with sync=True."""
    if trace:
        from luxc.runtime.files import check_writable_directory

        check_writable_directory(trace, "--trace")
    if Path(target).is_dir():
        cold, warm, times, cost, mem = _profile_dir(target, steps, trace)
        what = "load + compile"
    else:
        cold, warm, times, cost, mem = _profile_spec(target, steps,
                                                     compile_options(passes, precision, xla_option), trace)
        what = "compile"
    median, p95 = statistics.median(times), _percentile(times, 0.95)
    click.echo(f"{what:<14} {cold:8.3f} s cold" + (f", {warm:.3f} s warm (persistent cache)"
                                                   if warm is not None else ""))
    click.echo(f"{'step time':<14} {median * 1e3:8.3f} ms median, {p95 * 1e3:.3f} ms p95 "
               f"({len(times)} steps, sync=True)")
    click.echo(f"{'throughput':<14} {1 / median:8.1f} steps/s")
    click.echo(f"{'peak memory':<14} {format_bytes(peak_bytes(mem)):>8} "
               "(XLA buffers: arguments + outputs - aliased + temporaries)")
    flops = (cost or {}).get("flops")
    if flops:
        click.echo(f"{'achieved':<14} {flops / median / 1e9:8.2f} GFLOP/s "
                   f"({flops / 1e6:.1f} MFLOP per step)")
    if trace:
        click.echo(f"{'trace':<14} {trace} (open with Perfetto or TensorBoard)")

