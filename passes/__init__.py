"""luxc's StableHLO → StableHLO passes, one module each, run by MLIR's greedy rewrite driver.

``available()`` lists them; ``run_pipeline(module, names)`` runs them in order and returns one
:class:`PassRecord` each; ``default_pipeline(platform)`` is what ``CompileOptions(passes=
"default")`` means on that platform: only passes measured to be faster there (``benchmarks/``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jaxlib.mlir import ir

from luxc.passes import (
    conv_few_channels,
    conv_input_grad_dot,
    conv_weight_grad_dot,
    dot_f32_accumulate,
    dot_flatten,
    dot_swap_operands,
    fuse_loss_reductions,
    fuse_rsqrt,
    maxpool_grad_select,
)
from luxc.passes._match import count_ops


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: ``rewrites`` and the op counts before and after."""

    name: str
    rewrites: int
    ops_before: int
    ops_after: int
    seconds: float


@dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    run: Callable[[ir.Module], int]
    default_on: tuple[str, ...]


# default_on lists the platforms where the pass was MEASURED faster (python -m benchmarks.ablation,
# interleaved medians). No GPU or TPU has been available to measure on, so no pass is in their
# default pipelines yet: they are opt-in there (CompileOptions(passes=[...]) or "all").
_REGISTRY: dict[str, PassInfo] = {
    # XLA:CPU: 0.76x (24% faster) on a LeNet-5 step at batch 128; bit-identical results.
    maxpool_grad_select.NAME: PassInfo(maxpool_grad_select.NAME, maxpool_grad_select.DESCRIPTION,
                                       maxpool_grad_select.run, ("cpu",)),
    # XLA:CPU: 0.91x on a LeNet-5 step alone, 0.73x together with maxpool_grad_select;
    # 0.89x-0.97x on other one-channel first layers.
    conv_few_channels.NAME: PassInfo(conv_few_channels.NAME, conv_few_channels.DESCRIPTION,
                                     conv_few_channels.run, ("cpu",)),
    # XLA:CPU: 0.71x-1.03x (median 0.89x, six interleaved runs on a loaded machine) on a LeNet-5
    # step on top of the two passes above; alone, LeNet's conv2 input gradient 0.36x-0.46x.
    conv_input_grad_dot.NAME: PassInfo(conv_input_grad_dot.NAME, conv_input_grad_dot.DESCRIPTION,
                                       conv_input_grad_dot.run, ("cpu",)),
    # XLA:CPU: 0.86x-1.21x on a LeNet-5 step on top of conv_input_grad_dot; not reliably faster.
    conv_weight_grad_dot.NAME: PassInfo(conv_weight_grad_dot.NAME, conv_weight_grad_dot.DESCRIPTION,
                                        conv_weight_grad_dot.run, ()),
    # XLA:CPU: 0.885x on the transformer block (3-axis Dense layers), 0.95x on the Dice head,
    # 1.01x-1.03x (noise) on LeNet-5 (one rewritten dot), nothing to do on the MLPs.
    dot_flatten.NAME: PassInfo(dot_flatten.NAME, dot_flatten.DESCRIPTION, dot_flatten.run, ("cpu",)),
    # XLA:CPU: 0.90x, 1.00x on the transformer block; 0.81x, 1.37x on the MLP: no clear win.
    dot_swap_operands.NAME: PassInfo(dot_swap_operands.NAME, dot_swap_operands.DESCRIPTION,
                                     dot_swap_operands.run, ()),
    # XLA:CPU: 0.99x on a BatchNorm MLP step (its algebraic simplifier already does this).
    fuse_rsqrt.NAME: PassInfo(fuse_rsqrt.NAME, fuse_rsqrt.DESCRIPTION, fuse_rsqrt.run, ()),
    # XLA:CPU: alone 1.54x SLOWER on a Dice step (a variadic reduce leaves the fused reduction
    # emitter). With xla_cpu_use_fusion_emitters=False it is 0.79x on that reduction-bound step
    # but 1.10x on a BatchNorm MLP, so on CPU it is an opt-in:
    # CompileOptions(passes=["fuse_loss_reductions"],
    #                xla_options={"xla_cpu_use_fusion_emitters": False}).
    fuse_loss_reductions.NAME: PassInfo(fuse_loss_reductions.NAME,
                                        fuse_loss_reductions.DESCRIPTION,
                                        fuse_loss_reductions.run, ()),
    # Mixed precision: XLA:CPU 1.05x, 1.01x on bf16 MLP and transformer steps (it still converts
    # the operands to float32 inside a whole step): opt-in (benchmarks/README.md).
    dot_f32_accumulate.NAME: PassInfo(dot_f32_accumulate.NAME, dot_f32_accumulate.DESCRIPTION,
                                      dot_f32_accumulate.run, ()),
}


def available() -> dict[str, str]:
    """Pass name → one-line description."""
    return {name: info.description for name, info in _REGISTRY.items()}


def default_pipeline(platform: str) -> tuple[str, ...]:
    """The passes that are faster on ``platform`` ("cpu", "cuda", "rocm", "tpu")."""
    return tuple(n for n, info in _REGISTRY.items() if platform in info.default_on)


def resolve(passes: str | Sequence[str], platform: str) -> tuple[str, ...]:
    """``"default"`` / ``"none"`` / ``"all"`` / names → a tuple of pass names (validated)."""
    if isinstance(passes, str):
        if passes == "default":
            return default_pipeline(platform)
        if passes == "none":
            return ()
        if passes == "all":
            return tuple(_REGISTRY)
        passes = [p.strip() for p in passes.split(",") if p.strip()]
    unknown = [p for p in passes if p not in _REGISTRY]
    if unknown:
        raise ValueError(
            f"unknown pass {unknown[0]!r}; available passes are {', '.join(_REGISTRY)} "
            "(or 'default', 'none', 'all')"
        )
    return tuple(passes)


def run_pipeline(module: ir.Module, names: Sequence[str],
                 dump_dir: str | Path | None = None) -> list[PassRecord]:
    """Run the named passes on ``module`` in place, in order.

    With ``dump_dir``, writes ``00-input.mlir`` and ``NN-<pass>.mlir`` after each pass.
    """
    records = []
    dump = Path(dump_dir) if dump_dir is not None else None
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "00-input.mlir").write_text(str(module))
    for i, name in enumerate(names, start=1):
        info = _REGISTRY[name]
        before = count_ops(module)
        t0 = time.perf_counter()
        rewrites = info.run(module)
        seconds = time.perf_counter() - t0
        records.append(PassRecord(name, rewrites, before, count_ops(module), seconds))
        if dump is not None:
            (dump / f"{i:02d}-{name}.mlir").write_text(str(module))
    return records


__all__ = ["PassRecord", "available", "default_pipeline", "resolve", "run_pipeline"]
