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


def _row(label: str, value: str, unit: str = "", note: str = "") -> str:
    """One aligned row: the numbers right-aligned in one column, their units in the next."""
    return f"{label:<15}{value:>10} {unit:<8}{note}".rstrip()


def _batch(data_leaves: list) -> str:
    shapes = [getattr(x, "shape", ()) for x in data_leaves]
    return f"{shapes[0][0]} (leading axis of data[0])" if shapes and shapes[0] else "? (scalar data)"


def _passes(report: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name} ({n} rewrite{'' if n == 1 else 's'})" for name, n in report) or "none"


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
    facts = {"batch": _batch(jax.tree.leaves(data)),
             "passes": _passes([(r.name, r.rewrites) for r in cs.pass_report])}
    return cold, warm, times, cs.cost_analysis(), cs.memory_stats(), facts


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
    facts = {"batch": _batch(loaded.data),
             "passes": _passes([(r["name"], r["rewrites"]) for r in loaded.pass_report]),
             "executable": loaded.executable_source}
    return cold, None, times, loaded.cost_analysis(), loaded.memory_stats(), facts


@click.command()
@click.argument("target")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=1),
              help="timed steps (after one untimed warm-up step)")
@click.option("--trace", type=click.Path(file_okay=False), help="write a jax profiler trace here")
@passes_option
@precision_option
@xla_option
def profile(target, steps, trace, passes, precision, xla_option):
    """Time the step of TARGET (a SPEC or an artefact directory) with sync=True.

    Reports the compile (or load) time, the step time's min / median / max over --steps
    steps, steps/s, XLA's peak memory and the achieved FLOP/s, with the batch size and the
    passes the step was compiled with.
    """
    if trace:
        from luxc.runtime.files import check_writable_directory

        check_writable_directory(trace, "--trace")
    if Path(target).is_dir():
        cold, warm, times, cost, mem, facts = _profile_dir(target, steps, trace)
        what = "load + compile"
    else:
        cold, warm, times, cost, mem, facts = _profile_spec(
            target, steps, compile_options(passes, precision, xla_option), trace)
        what = "compile"
    median = statistics.median(times)
    for label in ("batch", "passes", "executable"):
        if label in facts:
            click.echo(f"{label:<15}{facts[label]}")
    click.echo(_row(what, f"{cold:.3f}", "s", "cold" + (f", {warm:.3f} s warm (persistent cache)"
                                                       if warm is not None else "")))
    click.echo(_row("step time", f"{median * 1e3:.3f}", "ms", f"median; min {min(times) * 1e3:.3f} ms, "
                    f"max {max(times) * 1e3:.3f} ms over {len(times)} steps (sync=True)"))
    click.echo(_row("throughput", f"{1 / median:.1f}", "steps/s"))
    value, _, unit = format_bytes(peak_bytes(mem)).partition(" ")
    click.echo(_row("peak memory", value, unit,
                    "XLA buffers: arguments + outputs - aliased + temporaries"))
    flops = (cost or {}).get("flops")
    if flops:
        click.echo(_row("achieved", f"{flops / median / 1e9:.2f}", "GFLOP/s",
                        f"{flops / 1e6:.1f} MFLOP per step"))
    if trace:
        click.echo(f"{'trace':<15}{trace} (open with Perfetto or TensorBoard)")
