"""``python -m benchmarks``: luxc against its peers on five workloads, in one interleaved run.

    pip install -e ".[bench]"         # torch, flax, equinox, matplotlib (peers are optional)
    python -m benchmarks              # about 10 minutes on 2 cores; writes RESULTS.md + PNG
    python -m benchmarks --quick      # a minute: fewer rounds and steps
    python -m benchmarks --only lenet,transformer --rounds 21

Each sample times ``steps`` training steps of one variant and waits for the last; the variants
of a workload run in a freshly shuffled order every round, so machine noise hits all alike.
Reported: the median per step, the min-max over rounds, the ratio to the fastest variant, and
the first call's wall time (tracing + compiling + one step). "luxc, passes=none" is luxc with
its StableHLO passes off, in the same run: the before/after of the pass defaults; "luxc, no YNN
fusions" is luxc with ``xla_cpu_experimental_ynn_fusion_type=""`` (a candidate CPU default).
A peer that is not installed is skipped, with a line saying so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable

import luxc

try:
    from benchmarks import _report, depth, first_step, peers_equinox, peers_gpt, peers_jax, peers_torch
    from benchmarks import workloads as wl
    from benchmarks._timing import samples, steps
except ImportError:  # run as a script from benchmarks/
    import _report
    import depth
    import first_step
    import peers_equinox
    import peers_gpt
    import peers_jax
    import peers_torch
    import workloads as wl
    from _timing import samples, steps

LUXC = "luxc AutoXLA"
LUXC_NO_PASSES = "luxc, passes=none"
LUXC_NO_YNN = "luxc, no YNN fusions"
LUXC_STEPS = "luxc train_steps_, 8 steps a call"
LUXC_BF16 = "luxc bf16"
# XLA:CPU's YNNPACK fusions off: the largest lever measured on the CNN (benchmarks/README.md).
_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}

# name -> (module that must be installed, or None; step factory)
PEERS: dict[str, tuple[str | None, Callable]] = {
    LUXC: (None, peers_jax.luxc_step),
    LUXC_NO_PASSES: (None, lambda w, x, y: peers_jax.luxc_step(
        w, x, y, luxc.CompileOptions(passes="none"))),
    LUXC_NO_YNN: (None, lambda w, x, y: peers_jax.luxc_step(
        w, x, y, luxc.CompileOptions(xla_options=_NO_YNN))),
    _report.JIT_BASELINE: (None, peers_jax.jax_jit_step),
    "flax nnx": ("flax", peers_jax.flax_nnx_step),
    "equinox": ("equinox", peers_equinox.equinox_step),
    "torch eager": ("torch", lambda w, x, y: peers_torch.torch_step(w, x, y, compiled=False)),
    "torch.compile": ("torch", lambda w, x, y: peers_torch.torch_step(w, x, y, compiled=True)),
    # Mixed precision (issue 21), on the MLP, LeNet and the transformer block only.
    LUXC_BF16: (None, lambda w, x, y: peers_jax.luxc_step(
        w, x, y, luxc.CompileOptions(mixed_precision="bf16"))),
    "luxc f16": (None, lambda w, x, y: peers_jax.luxc_step(
        w, x, y, luxc.CompileOptions(mixed_precision="f16"))),
    "jax.jit, hand-cast bf16": (None, lambda w, x, y: peers_jax.jax_jit_step(
        w, x, y, hand_cast_bf16=True)),
    "torch eager autocast bf16": ("torch", lambda w, x, y: peers_torch.torch_step(
        w, x, y, compiled=False, autocast=True)),
    "torch.compile autocast bf16": ("torch", lambda w, x, y: peers_torch.torch_step(
        w, x, y, compiled=True, autocast=True)),
}
MIXED_PRECISION = (LUXC_BF16, "luxc f16", "jax.jit, hand-cast bf16", "torch eager autocast bf16",
                   "torch.compile autocast bf16")
MIXED_PRECISION_WORKLOADS = ("mlp", "lenet", "transformer")


def makers_for(work: wl.Workload, makers: dict[str, Callable]) -> dict[str, Callable]:
    """The variants measured on ``work``: the mixed-precision ones on its three workloads."""
    if work.key in MIXED_PRECISION_WORKLOADS:
        return makers
    return {k: v for k, v in makers.items() if k not in MIXED_PRECISION}


def measure(work: wl.Workload, makers: dict[str, Callable], rounds: int, n_steps: int,
            title: str | None = None, fresh: int = 0) -> _report.Case:
    """Build, warm and time every variant of ``work`` (``makers``: name -> ``make(work, x, y)``
    returning a step), print and return its :class:`_report.Case`; ``fresh``: samples of
    luxc's and jax.jit's first step, each in a fresh process (:mod:`benchmarks.first_step`)."""
    x, y = work.data()
    first, runs, per_call = {}, {}, {}
    for name, make in makers.items():
        step = make(work, x, y)
        per_call[name] = getattr(step, "steps_per_call", 1)  # train_steps_: k steps a call
        t0 = time.perf_counter()
        step().block_until_ready()
        first[name] = time.perf_counter() - t0
        runs[name] = steps(step, n_steps)
        runs[name]()  # warm: a full sample's worth
    per_step = {k: [t / (n_steps * per_call[k]) for t in v] for k, v in samples(runs, rounds, 1).items()}
    case = _report.Case(work.label, title or work.title, n_steps, {
        k: _report.Timing(statistics.median(v), min(v), max(v), first[k]) for k, v in per_step.items()},
        first_step.fresh_samples(work.key, fresh) if fresh else {})
    print(_report.case_lines(case), flush=True)
    if case.fresh_first:
        print("  " + case.fresh_first_line(), flush=True)
    return case


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer steps per sample")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 15; 3 with --quick)")
    keys = [w.key for w in wl.WORKLOADS] + [peers_gpt.WORKLOAD.key, "depth"]
    parser.add_argument("--only", help="comma-separated workloads: " + ", ".join(keys))
    parser.add_argument("--out", default="benchmarks", help="directory for RESULTS.md and results.png")
    parser.add_argument("--depths", default=",".join(map(str, depth.DEPTHS)),
                        help="block counts of the depth workload (default 1,4,12,24)")
    parser.add_argument("--depth-variants", help="comma-separated variants of the depth workload "
                        "(default all): " + ", ".join(depth.VARIANTS))
    parser.add_argument("--retain-host-memory", action="store_true",
                        help="call luxc.retain_host_memory() first: the whole process, every "
                             "peer alike, keeps freed memory (README 'Host memory')")
    args = parser.parse_args(argv)
    if args.retain_host_memory:
        print("host memory retained:", luxc.retain_host_memory())
    rounds = args.rounds or (3 if args.quick else 15)
    only = args.only.split(",") if args.only else keys
    chosen = [w for w in wl.WORKLOADS if w.key in only]
    if not chosen and peers_gpt.WORKLOAD.key not in only and "depth" not in only:
        parser.error(f"--only: no workload named {args.only!r}; choose from " + ", ".join(keys))
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    if chosen:
        _workloads(chosen, rounds, args.quick, args.out, command)
    if peers_gpt.WORKLOAD.key in only:
        _gpt(rounds, args.quick, args.out, command)
    if "depth" in only:
        variants = tuple(args.depth_variants.split(",")) if args.depth_variants else None
        unknown = sorted(set(variants or ()) - set(depth.VARIANTS))
        if unknown:
            parser.error(f"--depth-variants: no variant named {', '.join(unknown)}; choose from "
                         + ", ".join(depth.VARIANTS))
        _depth(tuple(int(n) for n in args.depths.split(",")), variants, rounds, args.quick,
               args.out, command)


def _depth(depths: tuple[int, ...], variants: tuple[str, ...] | None, rounds: int, quick: bool,
           out: str, command: str) -> None:
    """The depth table, printed and written as the "Depth" section of RESULTS.md."""
    load = [f"{v:.2f}" for v in os.getloadavg()]
    rows = depth.run(depths, rounds, 1 if quick else 3, variants)
    text = depth.table(rows) + "\n\n" + depth.microbatch_table()
    section = (f"## Depth\n\n`{command}`, load average {' '.join(load)} at the start\n\n"
               f"{text}\n")
    print(section, flush=True)
    os.makedirs(out, exist_ok=True)
    path = f"{out}/RESULTS.md"
    old = open(path).read() if os.path.exists(path) else ""
    head, _, rest = old.partition("## Depth\n")
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    with open(path, "w") as f:
        f.write(head.rstrip("\n") + ("\n\n" if head.strip() else "") + section + tail)
    print(f"wrote the depth section of {path}")


def _installed(peers: dict[str, tuple[str | None, Callable]]) -> tuple[dict[str, Callable], list[str]]:
    names, skipped = [], []
    for name, (module, _) in peers.items():
        (names if module is None or importlib.util.find_spec(module) else skipped).append(name)
    for name in skipped:
        print(f"skipped {name}: {peers[name][0]} is not installed (pip install -e '.[bench]')")
    return {name: peers[name][1] for name in names}, skipped


def _gpt(rounds: int, quick: bool, out: str, command: str) -> None:
    """The flagship workload in its own section of RESULTS.md, with tokens/s."""
    makers, skipped = _installed(peers_gpt.PEERS)
    run = _report.Run.start(command, rounds, skipped)
    work = peers_gpt.WORKLOAD
    case = measure(work, makers, rounds, work.quick_steps if quick else work.steps,
                   fresh=1 if quick else 3)
    path = _report.write_tokens_section(run.finish(), case, out, peers_gpt.tokens_per_step())
    print(f"wrote the {work.label} section of {path}")


def _workloads(chosen: list[wl.Workload], rounds: int, quick: bool, out: str, command: str) -> None:
    makers, skipped = _installed(PEERS)
    run = _report.Run.start(command, rounds, skipped)
    cases = [measure(w, makers_for(w, makers), rounds, w.quick_steps if quick else w.steps,
                     fresh=1 if quick else 5)
             for w in chosen]
    # Several steps per compiled call, beside one: where dispatch or per-call allocation counts.
    several = [measure(w, {LUXC: PEERS[LUXC][1], LUXC_STEPS: peers_jax.luxc_steps,
                           "jax.jit+optax": PEERS["jax.jit+optax"][1]},
                       rounds, w.quick_steps if quick else w.steps, f"{w.title}: {LUXC_STEPS}")
               for w in chosen if w.key in ("tiny", "transformer")]
    path = _report.write(run.finish(), cases, out, several)
    print(f"wrote {path} and its chart")


if __name__ == "__main__":
    main()
