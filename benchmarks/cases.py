"""What is measured: the workloads, and for each the variants of every process group.

A *group* is one worker process per workload: ``luxc`` (luxc's variants), ``jax`` (hand-written
``jax.jit`` + optax, flax nnx, equinox), ``torch`` (eager and ``torch.compile``, autocast for
bf16), ``peak`` (the plain 2048³ float32 GEMM in jax and numpy: the machine's f32 ceiling) and
``ablation`` (luxc under the option sets of :mod:`benchmarks.ablation`, only when asked). torch
is imported in the torch group's process only.

Workloads: the five of :mod:`benchmarks.workloads`, ``resnet20`` and ``convmixer`` (Lux's
CIFAR-10 tutorial CNNs, :mod:`benchmarks.peers_cnn`), ``gpt`` (examples/charlm.py's model,
:mod:`benchmarks.peers_gpt`), ``depth-N`` (N pre-LN blocks as luxc ``Stack`` and ``Chain``,
:mod:`benchmarks.depth`) and ``gemm``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from benchmarks import depth, peers_cnn, peers_gpt
from benchmarks import workloads as wl

Maker = Callable[[], Callable[[], object]]
GROUPS = ("luxc", "jax", "torch")
PEERS = ("jax", "torch")  # the groups luxc is compared with
MIXED_PRECISION = ("mlp", "lenet", "transformer")
GEMM = "gemm"
DEPTHS = (1, 12, 24)
JIT_BASELINE = "jax.jit+optax"


def workload_keys(depths: tuple[int, ...] = DEPTHS) -> list[str]:
    """Every workload, in the order a full run measures them."""
    return [*(w.key for w in wl.WORKLOADS), *(w.key for w in peers_cnn.WORKLOADS),
            peers_gpt.WORKLOAD.key,
            *(f"depth-{n}" for n in depths), GEMM]


def groups_of(key: str) -> tuple[str, ...]:
    return ("peak",) if key == GEMM else GROUPS


def title(key: str, quick: bool = False) -> str:
    if key == GEMM:
        n = gemm_size(quick)
        return f"float32 GEMM {n}x{n}x{n} (the machine's f32 ceiling)"
    if key.startswith("depth-"):
        return (f"{key[6:]} pre-LN blocks W{wl.W} T{wl.T} MLP{wl.M}, b{depth.B} "
                f"(luxc Stack / Chain)")
    return _workload(key).title


def steps_per_sample(key: str, quick: bool) -> int:
    if key == GEMM:
        return 1 if quick else 5
    if key.startswith("depth-"):
        return 1 if quick else 3
    work = _workload(key)
    return work.quick_steps if quick else work.steps


def gemm_size(quick: bool) -> int:
    return 512 if quick else 2048


def missing_module(group: str) -> str | None:
    """The package a whole group needs and this machine lacks (``None``: none missing)."""
    return "torch" if group == "torch" and importlib.util.find_spec("torch") is None else None


def _workload(key: str) -> wl.Workload:
    if key == peers_gpt.WORKLOAD.key:
        return peers_gpt.WORKLOAD
    for work in peers_cnn.WORKLOADS:
        if work.key == key:
            return work
    for work in wl.WORKLOADS:
        if work.key == key:
            return work
    raise ValueError(f"no workload named {key!r}; choose from {', '.join(workload_keys())}")


def variants(key: str, group: str, device: bool, quick: bool = False) -> tuple[dict[str, Maker], list[str]]:
    """``group``'s variants of workload ``key`` (name -> maker of a step) and the names
    skipped because their package is not installed. Called in the worker process."""
    if key == GEMM:
        return _gemm(gemm_size(quick), device), []
    if key.startswith("depth-"):
        return depth.variants(int(key[6:]), group, device), []
    if key == peers_gpt.WORKLOAD.key:
        return _with_data(peers_gpt.WORKLOAD, peers_gpt.variants(group, device))
    if key in (w.key for w in peers_cnn.WORKLOADS):
        return _with_data(_workload(key), peers_cnn.variants(group, device))
    return _with_data(_workload(key), _standard(key, group, device))


def _with_data(work: wl.Workload, table: dict[str, tuple[str | None, Callable]]
               ) -> tuple[dict[str, Maker], list[str]]:
    makers, skipped, data = {}, [], []

    def batch():
        if not data:
            data.append(work.data())
        return data[0]

    for name, (module, make) in table.items():
        if module is not None and importlib.util.find_spec(module) is None:
            skipped.append(f"{name} ({module} is not installed)")
            continue
        makers[name] = lambda make=make: make(work, *batch())
    return makers, skipped


def _standard(key: str, group: str, device: bool) -> dict[str, tuple[str | None, Callable]]:
    mixed = key in MIXED_PRECISION
    if group == "luxc":
        import luxc
        from benchmarks.peers_jax import luxc_step

        out = {"luxc": (None, luxc_step),
               "luxc autotune": (None, lambda w, x, y: luxc_step(
                   w, x, y, luxc.CompileOptions(autotune=True)))}
        if mixed:
            out["luxc bf16"] = (None, lambda w, x, y: luxc_step(
                w, x, y, luxc.CompileOptions(mixed_precision="bf16")))
        return out
    if group == "ablation":
        from benchmarks.ablation import makers

        return makers(key)
    if group == "jax":
        from benchmarks.peers_equinox import equinox_step
        from benchmarks.peers_jax import flax_nnx_step, jax_jit_step

        out = {JIT_BASELINE: (None, jax_jit_step), "flax nnx": ("flax", flax_nnx_step),
               "equinox": ("equinox", equinox_step)}
        if mixed:
            out["jax.jit, hand-cast bf16"] = (None, lambda w, x, y: jax_jit_step(
                w, x, y, hand_cast_bf16=True))
        return out
    from benchmarks.peers_torch import torch_step

    out = {}
    for label, autocast in (("", False), (" autocast bf16", True)):
        if autocast and not mixed:
            continue
        for mode, compiled in (("torch eager", False), ("torch.compile", True)):
            out[mode + label] = ("torch", lambda w, x, y, c=compiled, a=autocast: torch_step(
                w, x, y, compiled=c, autocast=a, device=device))
    return out


class _Ready:
    """A numpy result the timer can wait on (numpy returns when it is done)."""

    def block_until_ready(self) -> None:
        return None


def _gemm(n: int, device: bool) -> dict[str, Maker]:
    def jax_gemm():
        import jax

        a, b = (jax.random.normal(jax.random.key(i), (n, n)) for i in (0, 1))
        f = jax.jit(lambda a, b: a @ b)
        return lambda: f(a, b)

    def numpy_gemm():
        import numpy as np

        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        done = _Ready()

        def step():
            np.matmul(a, b)
            return done

        return step

    # On an accelerator the ceiling is the device's: numpy's CPU product is not it.
    return {"jax f32 GEMM": jax_gemm} if device else {"jax f32 GEMM": jax_gemm,
                                                      "numpy f32 GEMM": numpy_gemm}


def gemm_flops(n: int) -> float:
    return 2.0 * n ** 3
