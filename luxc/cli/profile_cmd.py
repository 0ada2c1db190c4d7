"""``luxc profile``: time a step (from a SPEC or an artefact) with ``sync=True``."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import click

try:
    import resource
except ImportError:  # not on Windows: no page-fault row there
    resource = None

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


def _minor_faults() -> int | None:
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(one, steps: int, trace: str | None) -> tuple[list[float], float | None]:
    """Call ``one()`` (one synchronous step) ``steps`` times, inside a profiler trace when asked;
    returns each call's wall time and the minor page faults per step."""
    import jax

    times = []
    with jax.profiler.trace(trace) if trace else contextlib.nullcontext():
        faults = _minor_faults()
        for _ in range(steps):
            t = time.perf_counter()
            one()
            times.append(time.perf_counter() - t)
        if faults is not None:
            faults = (_minor_faults() - faults) / steps
    return times, faults


def _profile_spec(spec, steps, options, trace):
    import tempfile

    import jax

    import luxc
    from luxc.runtime import persistent_cache

    obj, data, ts = call_factory(spec)
    # The timed step is compiled as training compiles it: without a persistent cache (whose
    # entries keep XLA:CPU's one heap of temporaries, runtime/options.py).
    t0 = time.perf_counter()
    cs = luxc.compile_step(obj, data, ts, compile_options=options, donate=True)
    cold = time.perf_counter() - t0
    # The warm compile loads from a cache of its own, written just before: the user's cache is
    # neither read, written nor reconfigured.
    with tempfile.TemporaryDirectory(prefix="luxc-profile-cache-") as cache_dir, \
            persistent_cache.using(cache_dir):
        fresh = [ts.replace(cache=luxc.runtime.ExecutableCache()) for _ in range(2)]
        luxc.compile_step(obj, data, fresh[0], compile_options=options, donate=True)
        jax.clear_caches()
        t0 = time.perf_counter()
        luxc.compile_step(obj, data, fresh[1], compile_options=options, donate=True)
        warm = time.perf_counter() - t0
    state = {"ts": ts}

    def one():
        _, _, _, state["ts"] = cs(state["ts"], data, sync=True)

    one()  # the first call also allocates: not a step time
    times, faults = _timed(one, steps, trace)
    facts = {"batch": _batch(jax.tree.leaves(data)),
             "passes": _passes([(r.name, r.rewrites) for r in cs.pass_report])}
    return cold, warm, (times, faults), cs.cost_analysis(), cs.memory_stats(), facts


def _profile_dir(directory, steps, trace):
    import jax

    t0 = time.perf_counter()
    loaded = load_artifact(directory)
    cold = time.perf_counter() - t0
    state, data = {"state": loaded.state}, loaded.data

    def one():
        state["state"], loss, _ = loaded(state["state"], data)
        jax.block_until_ready(loss)

    one()
    times, faults = _timed(one, steps, trace)
    facts = {"batch": _batch(loaded.data),
             "passes": _passes([(r["name"], r["rewrites"]) for r in loaded.pass_report]),
             "executable": loaded.executable_source}
    return cold, None, (times, faults), loaded.cost_analysis(), loaded.memory_stats(), facts


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
    steps, steps/s, XLA's peak memory, the minor page faults per step and the achieved FLOP/s,
    with the batch size and the passes the step was compiled with.
    """
    if trace:
        from luxc.runtime.atomic_write import check_writable_directory

        check_writable_directory(trace, "--trace")
    if Path(target).is_dir():
        cold, warm, (times, faults), cost, mem, facts = _profile_dir(target, steps, trace)
        what = "load + compile"
    else:
        cold, warm, (times, faults), cost, mem, facts = _profile_spec(
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
    if faults is not None:
        # A step whose temporaries glibc maps anew on every call (over 64 MiB from XLA's worker
        # threads) shows here as ~one fault per base page; README "Host memory" says what to do.
        mib = faults * (resource.getpagesize() if resource else 4096) / 2**20
        click.echo(_row("page faults", f"{faults:,.0f}", "/step",
                        f"minor; ~{mib:,.0f} MiB of pages mapped anew per step (at the base page "
                        "size)" if faults >= 256 else "minor"))
    flops = (cost or {}).get("flops")
    if flops:
        click.echo(_row("achieved", f"{flops / median / 1e9:.2f}", "GFLOP/s",
                        f"{flops / 1e6:.1f} MFLOP per step"))
    if trace:
        click.echo(f"{'trace':<15}{trace} (open with Perfetto or TensorBoard)")
