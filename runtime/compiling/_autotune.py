"""Autotuning a compiled step (``CompileOptions(autotune=True)``): a few candidate
configurations that matter on the platform, each compiled and timed on a copy of the step's
arguments; the fastest is kept, and the choice with its measured alternatives is recorded.

    candidates ──compile──▶ executables ──warm-up, then rounds of one sample each on a copy of
    the arguments, order rotated──▶ per-round ratios to the default, their median ──min (the
    default unless another is more than 3% faster)──▶ the cached executable, its
    AutotuneReport

A sample of a training step is what a user's loop pays: a few calls dispatched back to back,
each on the state the last one returned, synchronised once (``chain``). One synchronised call
would rank a short step by its latency — the wake-up and fixed costs a loop hides: on the tiny
MLP of ``benchmarks/`` "no YNN fusions" took 0.90× the default's latency and 1.02× its time in
a loop (2026-12-06); tuning by latency kept it in one of two tries.

The candidates are few on purpose (:func:`candidates`): on CPU the default pipeline, no luxc
passes, XLA:CPU's YNNPACK fusions off and its fusion emitters off (both flags exist in jaxlib
0.10.2; an unknown flag would abort the process). Each one a user already fixed — a pass list,
an XLA option — is not varied: the user's choice wins. The tuned executable is cached under
options that say ``autotune=True``, so a later call with the same options reuses it and never
times again. :func:`tune` takes the timer as an argument: tests inject one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax

from luxc.runtime.compiling._options import CompileOptions, XlaValue

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_EMITTERS = "xla_cpu_use_fusion_emitters"


@dataclass(frozen=True)
class Candidate:
    """One configuration tried: a pass pipeline (``None``: the user's) and XLA options added
    under the user's own."""

    name: str
    passes: str | None = None
    xla_options: tuple[tuple[str, XlaValue], ...] = ()

    def options(self, base: CompileOptions) -> CompileOptions:
        """``base`` with this candidate applied and autotuning off (what is compiled)."""
        return CompileOptions(
            passes=base.passes if self.passes is None else self.passes,
            xla_options={**dict(self.xla_options), **dict(base.xla_options)},
            precision=base.precision, dump_dir=base.dump_dir,
            mixed_precision=base.mixed_precision, microbatches=base.microbatches)


DEFAULT = Candidate("default")
_CPU = (DEFAULT, Candidate("passes=none", "none"), Candidate("no YNN fusions", None, ((_YNN, ""),)),
        Candidate("no fusion emitters", None, ((_EMITTERS, False),)))
_OTHER = (DEFAULT, Candidate("passes=none", "none"))


def candidates(platform: str, options: CompileOptions) -> tuple[Candidate, ...]:
    """The candidates for ``platform``, less those that would vary what the user fixed."""
    user_xla = dict(options.xla_options)
    return tuple(c for c in (_CPU if platform == "cpu" else _OTHER)
                 if c is DEFAULT or ((c.passes is None or options.passes == "default")
                                     and not any(k in user_xla for k, _ in c.xla_options)))


@dataclass(frozen=True)
class AutotuneReport:
    """The candidate kept (``chosen``) and every candidate's median seconds per step, in the
    order they were tried."""

    chosen: str
    seconds: tuple[tuple[str, float], ...]
    tried: tuple[Candidate, ...]

    def chosen_options(self, base: CompileOptions) -> CompileOptions:
        """The concrete options of the kept candidate (autotuning off): what an artifact
        records and compiles with."""
        return next(c for c in self.tried if c.name == self.chosen).options(base)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"chosen": name, "candidates": [{name, passes, xla_options,
        median_seconds}, ...]}`` (``passes`` ``null``: the user's pipeline)."""
        times = dict(self.seconds)
        return {"chosen": self.chosen, "candidates": [
            {"name": c.name, "passes": c.passes, "xla_options": dict(c.xla_options),
             "median_seconds": times[c.name]} for c in self.tried]}

    def __str__(self) -> str:
        times = ", ".join(f"{n} {s * 1e3:.3g} ms" for n, s in self.seconds)
        return f"autotune: kept {self.chosen} ({times})"


# A candidate other than the default is kept only when it is this much faster: the timing of a
# short tuning run on a shared machine moves by a few percent, and a wrong switch costs more
# than a missed one (the default is what every benchmark measured).
MARGIN = 0.03


def choose(tried: Sequence[Candidate], seconds: Mapping[str, float],
           margin: float = MARGIN) -> AutotuneReport:
    """Keep the candidate with the least median seconds per step (``seconds``: name ->
    seconds); a tie goes to the earlier candidate, and the first (the default) is left only for
    one more than ``margin`` faster than it."""
    times = tuple((c.name, float(seconds[c.name])) for c in tried)
    best = min(range(len(tried)), key=lambda i: (times[i][1], i))
    if best and times[best][1] > times[0][1] * (1.0 - margin):
        best = 0
    return AutotuneReport(tried[best].name, times, tuple(tried))


def _copy(args: Sequence[Any]) -> list[Any]:
    return jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, list(args))


# How a call's outputs become the next call's arguments (a training step: the new parameters,
# optimiser state and model states, the same data).
Chain = Callable[[Sequence[Any], Any], Sequence[Any]]

# A chained sample lasts about this long: long enough that one synchronisation is a small part
# of it, short enough that a tuning run stays within its budget.
SAMPLE_SECONDS = 2e-3
MAX_CALLS_PER_SAMPLE = 64


def interleaved_seconds(calls: Mapping[str, Callable[..., Any]], args: Sequence[Any], *,
                        chain: Chain | None = None, warmup: int = 3, budget: float = 4.0,
                        rounds: tuple[int, int] = (9, 200)) -> dict[str, float]:
    """Seconds per call of each executable in ``calls``, each sample on a fresh copy of
    ``args`` (a donating step never consumes them): ``warmup`` untimed samples each, then
    rounds of one sample of every candidate, the order rotated each round, as many rounds as
    fit in ``budget`` seconds within ``rounds`` (least, most).

    A sample is one synchronised call; with ``chain``, as many calls as take about
    ``SAMPLE_SECONDS`` (at most ``MAX_CALLS_PER_SAMPLE``, the same number for every candidate),
    each on ``chain(arguments, outputs)`` of the one before, synchronised once at the end.

    Each candidate's figure is the first one's median time times the median of its per-round
    ratios to it: a ratio taken within one round cancels what the machine's load does to both,
    which a ratio of two medians over the whole run does not."""
    def sample(call: Callable[..., Any], k: int) -> float:
        current = jax.block_until_ready(_copy(args))
        t0 = time.perf_counter()
        out = call(*current)
        for _ in range(k - 1):
            current = chain(current, out)
            out = call(*current)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / k

    names = list(calls)
    latency = {n: min(sample(calls[n], 1) for _ in range(warmup)) for n in names}
    k = 1 if chain is None else max(1, min(MAX_CALLS_PER_SAMPLE,
                                           int(SAMPLE_SECONDS / max(latency[names[0]], 1e-9))))
    warm = sum(latency.values()) * k
    n_rounds = max(rounds[0], min(rounds[1], int(budget / max(warm, 1e-9))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(n_rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            samples[n].append(sample(calls[n], k))
    first = samples[names[0]]
    base = statistics.median(first)
    return {n: base * statistics.median(t / f for t, f in zip(v, first)) for n, v in samples.items()}


Timer = Callable[[Mapping[str, Callable[..., Any]], Sequence[Any]], Mapping[str, float]]


def tune(build: Callable[[CompileOptions], Any], args: Sequence[Any], options: CompileOptions,
         platform: str, timer: Timer | None = None, chain: Chain | None = None) -> Any:
    """Build (``build(options) -> Executable``) every candidate, time them together on
    ``args`` (``timer``, default :func:`interleaved_seconds`, chaining calls by ``chain``) and
    return the fastest executable with its :class:`AutotuneReport` as ``autotune_report``."""
    tried = candidates(platform, options)
    built = {c.name: build(c.options(options)) for c in tried}
    calls = {n: e.call for n, e in built.items()}
    seconds = (timer(calls, args) if timer is not None
               else interleaved_seconds(calls, args, chain=chain))
    report = choose(tried, seconds)
    exe = built[report.chosen]
    exe.autotune_report = report
    return exe
