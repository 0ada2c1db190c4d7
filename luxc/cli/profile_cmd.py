"""``luxc profile``: time a step (from a SPEC or an artifact) with ``sync=True``."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

try:
    import resource
except ImportError:  # not on Windows: no page-fault row there
    resource = None

from luxc.cli._common import (
    CliError,
    autotune_option,
    call_factory,
    compile_options,
    format_bytes,
    load_artifact,
    mixed_precision_option,
    passes_option,
    peak_bytes,
    precision_option,
    unchecked_native_calls_option,
    xla_option,
)
from luxc.cli.run_outputs import check_outside


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


def _profile_spec(spec, steps, options, trace, ops=False):
    import tempfile

    import jax

    import luxc
    from luxc.runtime.caching import persistent_cache

    obj, data, ts = call_factory(spec)
    # The timed step is compiled as training compiles it: without a persistent cache (whose
    # entries keep XLA:CPU's one heap of temporaries, runtime/compiling/_options.py).
    t0 = time.perf_counter()
    cs = luxc.compile_step(obj, data, ts, compile_options=options, donate=True)
    cold = time.perf_counter() - t0
    if cs.autotune_report is not None:  # the warm compile builds the kept candidate, untimed
        options = cs.autotune_report.chosen_options(options)
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

    t0 = time.perf_counter()
    one()  # the first call also allocates: not a step time
    first_call = time.perf_counter() - t0
    times, faults = _timed(one, steps, trace)
    facts = {"batch": _batch(jax.tree.leaves(data)),
             "passes": _passes([(r.name, r.rewrites) for r in cs.pass_report]),
             "compile breakdown": {**cs.compile_report, "first call": first_call},
             "autotune": cs.autotune_report,
             "ops": cs.profile(state["ts"], data, steps=min(steps, 20)) if ops else None}
    return cold, warm, (times, faults), cs.step_flops(), cs.memory_stats(), facts


def _profile_dir(directory, steps, trace, ops=False, allow_unchecked_native_calls=False):
    import jax

    from luxc.runtime.trust._guarded_call import guarded

    t0 = time.perf_counter()
    loaded = load_artifact(directory, allow_unchecked_native_calls=allow_unchecked_native_calls)
    cold = time.perf_counter() - t0
    state, data = {"state": loaded.state}, loaded.data

    def call():
        new, loss, _ = loaded(state["state"], data)
        jax.block_until_ready(loss)
        return new

    def one():
        # A stranger's step runs where Ctrl-C stops it, as under `luxc run`.
        state["state"] = call() if loaded.signed_by_this_user else guarded(call, None, "the step")

    if not loaded.signed_by_this_user:
        click.echo("note: timing a step of an artifact you did not sign; Ctrl-C stops it",
                   err=True)
    one()
    times, faults = _timed(one, steps, trace)
    facts = {"batch": _batch(loaded.data),
             "passes": _passes([(r.name, r.rewrites) for r in loaded.pass_report]),
             "executable": loaded.executable_source,
             "ops": loaded.profile(steps=min(steps, 20)) if ops else None}
    return cold, None, (times, faults), loaded.step_flops(), loaded.memory_stats(), facts


def _ops_rows(records, n: int) -> list[str]:
    rows = [f"{'op':<34}{'time/step':>11}{'share':>7}{'count':>6}  {'kind':<22}{'bytes':>10}"
            f"{'MFLOP':>9}{'GFLOP/s':>9}  source"]
    for r in records[:n]:
        where = " ".join(x for x in (r.source, f"[{r.scope}]" if r.scope else None) if x)
        rate = r.flops_per_second
        rows.append(f"{r.name[:33]:<34}{r.seconds * 1e6:>9.1f}us{r.share:>7.1%}{r.count:>6.0f}  "
                    f"{r.kind[:21]:<22}{format_bytes(r.bytes) if r.bytes is not None else '-':>10}"
                    f"{f'{r.flops / 1e6:.2f}' if r.flops is not None else '-':>9}"
                    f"{f'{rate / 1e9:.1f}' if rate else '-':>9}  {where or '-'}")
    return rows


def _breakdown_rows(parts: dict[str, float]) -> list[str]:
    total = sum(parts.values())
    return [f"  {name:<28}{sec:>8.3f} s  {sec / total:>4.0%}" for name, sec in parts.items()]


def _compare_settings(base: dict, compare: tuple[str, ...]) -> dict:
    """``base`` (``passes``, ``precision``, ``xla_option``) with each ``KEY=VALUE`` of
    ``--compare`` applied (``xla-option=NAME=VALUE`` adds an XLA option)."""
    other = {**base, "xla_option": tuple(base["xla_option"])}
    for item in compare:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in other:
            raise CliError(f"--compare takes passes=…, precision=…, mixed-precision=… or "
                           f"xla-option=NAME=VALUE; "
                           f"received {item!r}")
        if key == "mixed_precision" and value.lower() in ("none", ""):
            value = None
        other[key] = other[key] + (value,) if key == "xla_option" else value
    return other


def _compare(spec, steps: int, settings: list[dict]) -> list[list[float]]:
    """Each option set's step (compiled without donation, so one TrainState serves all),
    timed in turn over ``steps`` rounds: the same load falls on every variant."""
    import luxc

    obj, data, ts = call_factory(spec)
    steps_ = [luxc.compile_step(obj, data, ts, compile_options=compile_options(**s))
              for s in settings]
    for cs in steps_:
        cs(ts, data, sync=True)  # the first call allocates
    times = [[] for _ in steps_]
    for _ in range(steps):
        for cs, out in zip(steps_, times, strict=True):
            t0 = time.perf_counter()
            cs(ts, data, sync=True)
            out.append(time.perf_counter() - t0)
    return times


def _report_compare(spec, steps, base, compare, as_json) -> None:
    settings = [base, _compare_settings(base, compare)]
    times = _compare(spec, steps, settings)
    medians = [statistics.median(t) for t in times]
    if as_json:
        click.echo(json.dumps({"variants": [
            {"options": {**s, "xla_option": list(s["xla_option"])}, "median_seconds": m,
             "min_seconds": min(t), "steps": len(t)}
            for s, m, t in zip(settings, medians, times, strict=True)],
            "ratio": medians[1] / medians[0]}))
        return
    for name, s, m, t in zip(("A", "B"), settings, medians, times, strict=True):
        opts = (f"passes={s['passes']} precision={s['precision']} "
                f"mixed-precision={s['mixed_precision'] or 'none'}") + "".join(
            f" xla-option={x}" for x in s["xla_option"])
        click.echo(_row(f"step time {name}", f"{m * 1e3:.3f}", "ms",
                        f"median, min {min(t) * 1e3:.3f} ms; {opts}"))
    click.echo(_row("ratio B / A", f"{medians[1] / medians[0]:.3f}", "",
                    f"{len(times[0])} steps each, interleaved (sync=True, no donation)"))


@click.command()
@click.argument("target")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=1),
              help="timed steps (after one untimed warm-up step)")
@click.option("--trace", type=click.Path(file_okay=False), help="write a jax profiler trace here")
@click.option("--ops", type=click.IntRange(min=1), is_flag=False, flag_value=15, default=None,
              help="also list the N ops taking the most time per step (default N: 15)")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON object")
@click.option("--compare", multiple=True, metavar="KEY=VALUE",
              help="time the step against the same step with these options changed "
                   "(passes=none, precision=high, xla-option=NAME=VALUE; repeatable), "
                   "interleaved, and print the ratio")
@passes_option
@precision_option
@mixed_precision_option
@xla_option
@autotune_option
@unchecked_native_calls_option
def profile(target, steps, trace, ops, as_json, compare, passes, precision, mixed_precision,
            xla_option, autotune, allow_unchecked_native_calls):
    """Time the step of TARGET (a SPEC or an artifact directory) with sync=True.

    Reports the compile (or load) time, the step time's min / median / max over --steps
    steps, steps/s, XLA's peak memory, the minor page faults per step and the achieved FLOP/s,
    with the batch size and the passes the step was compiled with; for a SPEC, where the
    compile's time went (tracing, each pass, lowering, XLA compile, the first call). --ops N
    lists the N HLO ops taking the most time per step, with the user's source line of each
    (for an artifact: its checked StableHLO compiled again with per-op tracing).
    --compare KEY=VALUE times the step (A) against the step with those options (B) instead.
    --autotune compiles and times a few candidate configurations first and profiles the
    fastest (the compile time includes the tuning); the candidates' times are listed.
    """
    if autotune and Path(target).is_dir():
        raise click.UsageError("--autotune compiles a SPEC (FILE:FUNCTION); an artifact directory "
                               "holds one compiled step (compile it with luxc compile --autotune)")
    if compare:
        if Path(target).is_dir():
            raise click.UsageError("--compare compiles a SPEC (FILE:FUNCTION) twice; an artifact "
                                   "directory holds one compiled step")
        _report_compare(target, steps, {"passes": passes, "precision": precision,
                                        "mixed_precision": mixed_precision,
                                        "xla_option": xla_option}, compare, as_json)
        return
    if trace:
        _check_trace(trace, target)
    if Path(target).is_dir():
        cold, warm, (times, faults), flops, mem, facts = _profile_dir(
            target, steps, trace, ops=bool(ops),
            allow_unchecked_native_calls=allow_unchecked_native_calls)
        what = "load + compile"
    else:
        cold, warm, (times, faults), flops, mem, facts = _profile_spec(
            target, steps, compile_options(passes, precision, xla_option, mixed_precision,
                                           autotune), trace, ops=bool(ops))
        what = "compile"
    report = _Report(what, cold, warm, times, faults, flops, mem, facts,
                     facts.pop("ops", None), facts.pop("compile breakdown", None),
                     facts.pop("autotune", None))
    if as_json:
        click.echo(json.dumps(report.as_dict(ops)))
        return
    report.echo(trace, ops)


def _check_trace(trace: str, target: str) -> None:
    from luxc.runtime.files._atomic_write import check_writable_directory

    if Path(target).is_dir():  # a trace never goes into the artifact it profiles
        check_outside(trace, target, "--trace")
    check_writable_directory(trace, "--trace")


@dataclass
class _Report:
    """What ``luxc profile`` measured, printed as rows or as one JSON object."""

    what: str  # "compile" or "load + compile"
    cold: float
    warm: float | None
    times: list[float]
    faults: float | None
    flops: float | None
    mem: dict | None
    facts: dict[str, Any]
    records: list[Any] | None
    breakdown: dict[str, float] | None
    tuned: Any

    def as_dict(self, ops: int | None) -> dict[str, Any]:
        times = self.times
        return {
            **self.facts, "compile_seconds": self.cold, "warm_compile_seconds": self.warm,
            "compile_breakdown": self.breakdown,
            "autotune": self.tuned.as_dict() if self.tuned is not None else None,
            "step_seconds": {"median": statistics.median(times), "min": min(times),
                             "max": max(times), "steps": len(times)},
            "peak_bytes": peak_bytes(self.mem), "minor_faults_per_step": self.faults,
            "flops_per_step": self.flops,
            "ops": [r.as_dict() for r in self.records[:ops]] if self.records is not None
            else None}

    def echo(self, trace: str | None, ops: int | None) -> None:
        for label in ("batch", "passes", "executable"):
            if label in self.facts:
                click.echo(f"{label:<15}{self.facts[label]}")
        click.echo(_row(self.what, f"{self.cold:.3f}", "s", "cold" + (
            f", {self.warm:.3f} s warm (persistent cache)" if self.warm is not None else "")))
        for line in _breakdown_rows(self.breakdown) if self.breakdown else ():
            click.echo(line)
        if self.tuned is not None:
            click.echo(f"{'autotune':<15}{str(self.tuned).removeprefix('autotune: ')}")
        self._echo_step()
        if trace:
            click.echo(f"{'trace':<15}{trace} (open with Perfetto or TensorBoard)")
        if self.records is not None:
            click.echo(f"ops ({len(self.records)} in the step; top {min(ops, len(self.records))} "
                       f"by time, {sum(r.share for r in self.records[:ops]):.0%} of the step):")
            for line in _ops_rows(self.records, ops):
                click.echo("  " + line)

    def _echo_step(self) -> None:
        times, median = self.times, statistics.median(self.times)
        click.echo(_row("step time", f"{median * 1e3:.3f}", "ms", f"median; min "
                        f"{min(times) * 1e3:.3f} ms, max {max(times) * 1e3:.3f} ms over "
                        f"{len(times)} steps (sync=True)"))
        click.echo(_row("throughput", f"{1 / median:.1f}", "steps/s"))
        value, _, unit = format_bytes(peak_bytes(self.mem)).partition(" ")
        click.echo(_row("peak memory", value, unit,
                        "XLA buffers: arguments + outputs - aliased + temporaries"))
        if self.faults is not None:
            # A step whose temporaries glibc maps anew on every call (over 64 MiB from XLA's
            # worker threads) shows here as ~one fault per base page; README "Host memory"
            # says what to do.
            mib = self.faults * (resource.getpagesize() if resource else 4096) / 2**20
            click.echo(_row("page faults", f"{self.faults:,.0f}", "/step",
                            f"minor; ~{mib:,.0f} MiB of pages mapped anew per step (at the base "
                            "page size)" if self.faults >= 256 else "minor"))
        if self.flops:
            click.echo(_row("achieved", f"{self.flops / median / 1e9:.2f}", "GFLOP/s",
                            f"{self.flops / 1e6:.1f} MFLOP per step"))
