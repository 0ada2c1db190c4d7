"""luxc's StableHLO → StableHLO passes, one module each, run by MLIR's greedy rewrite driver.

``available()`` lists them; ``run_pipeline(module, names)`` runs them in order and returns one
:class:`PassRecord` each; ``default_pipeline(platform)`` is what ``CompileOptions(passes=
"default")`` means on that platform: only passes measured to be faster there (``benchmarks/``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxlib.mlir import ir

from luxc.passes import (
    conv_depthwise,
    conv_depthwise_weight_grad,
    conv_few_channels,
    conv_full_window_dot,
    conv_input_grad_dot,
    conv_weight_grad_dot,
    convert_bf16_bits,
    dot_bf16_batched,
    dot_bf16_canonical,
    dot_f32_accumulate,
    dot_flatten,
    dot_scale_fold,
    dot_swap_operands,
    dus_bf16_bits,
    elementwise_bf16_f32,
    fuse_loss_reductions,
    fuse_rsqrt,
    maxpool_grad_select,
    reduce_f32_accumulate,
    reduce_window_f32,
    relu_mask_from_output,
)
from luxc.passes._marks import strip_marks
from luxc.passes._match import count_ops


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: ``rewrites`` and the op counts before and after, in ``seconds``. The
    one pass-report type: ``CompiledStep.pass_report`` and a loaded artifact's are lists of it;
    the artifact manifest stores each as :meth:`to_json`'s object.

    >>> r = PassRecord("fuse_rsqrt", rewrites=2, ops_before=10, ops_after=8, seconds=0.5)
    >>> r.to_json()
    {'name': 'fuse_rsqrt', 'rewrites': 2, 'ops_before': 10, 'ops_after': 8, 'seconds': 0.5}
    >>> PassRecord.from_json(r.to_json()) == r
    True
    """

    name: str
    rewrites: int
    ops_before: int
    ops_after: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``pass_report`` entry: every field, by name."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> PassRecord:
        """A manifest's ``pass_report`` entry (its types already checked). ``seconds`` is 0.0
        for an entry that does not record it (the manifest schema does not require it)."""
        return cls(entry["name"], entry["rewrites"], entry["ops_before"], entry["ops_after"],
                   float(entry.get("seconds", 0.0)))


@dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    run: Callable[[ir.Module], int]
    default_on: tuple[str, ...]


# default_on lists the platforms where the pass was MEASURED faster (python -m benchmarks.ablation,
# interleaved medians; each pass's figures: benchmarks/README.md, "Passes in the default
# pipelines"). No GPU or TPU has been available to measure on, so no pass is in their
# default pipelines yet: they are opt-in there (CompileOptions(passes=[...]) or "all").
_REGISTRY: dict[str, PassInfo] = {
    maxpool_grad_select.NAME: PassInfo(maxpool_grad_select.NAME, maxpool_grad_select.DESCRIPTION,
                                       maxpool_grad_select.run, ("cpu",)),
    conv_few_channels.NAME: PassInfo(conv_few_channels.NAME, conv_few_channels.DESCRIPTION,
                                     conv_few_channels.run, ("cpu",)),
    conv_depthwise.NAME: PassInfo(conv_depthwise.NAME, conv_depthwise.DESCRIPTION,
                                  conv_depthwise.run, ("cpu",)),
    conv_depthwise_weight_grad.NAME: PassInfo(conv_depthwise_weight_grad.NAME,
                                              conv_depthwise_weight_grad.DESCRIPTION,
                                              conv_depthwise_weight_grad.run, ("cpu",)),
    conv_full_window_dot.NAME: PassInfo(conv_full_window_dot.NAME,
                                        conv_full_window_dot.DESCRIPTION,
                                        conv_full_window_dot.run, ("cpu",)),
    conv_input_grad_dot.NAME: PassInfo(conv_input_grad_dot.NAME, conv_input_grad_dot.DESCRIPTION,
                                       conv_input_grad_dot.run, ("cpu",)),
    conv_weight_grad_dot.NAME: PassInfo(conv_weight_grad_dot.NAME, conv_weight_grad_dot.DESCRIPTION,
                                        conv_weight_grad_dot.run, ()),
    dot_flatten.NAME: PassInfo(dot_flatten.NAME, dot_flatten.DESCRIPTION, dot_flatten.run, ("cpu",)),
    dot_scale_fold.NAME: PassInfo(dot_scale_fold.NAME, dot_scale_fold.DESCRIPTION, dot_scale_fold.run,
                                  ("cpu",)),
    dot_swap_operands.NAME: PassInfo(dot_swap_operands.NAME, dot_swap_operands.DESCRIPTION,
                                     dot_swap_operands.run, ()),
    fuse_rsqrt.NAME: PassInfo(fuse_rsqrt.NAME, fuse_rsqrt.DESCRIPTION, fuse_rsqrt.run, ()),
    fuse_loss_reductions.NAME: PassInfo(fuse_loss_reductions.NAME,
                                        fuse_loss_reductions.DESCRIPTION,
                                        fuse_loss_reductions.run, ()),
    # The mixed-precision passes match bf16/f16 ops only (a float32 module is untouched), in
    # this order: dot_bf16_canonical needs the float32 dot results dot_f32_accumulate gives.
    dot_f32_accumulate.NAME: PassInfo(dot_f32_accumulate.NAME, dot_f32_accumulate.DESCRIPTION,
                                      dot_f32_accumulate.run, ("cpu",)),
    dot_bf16_canonical.NAME: PassInfo(dot_bf16_canonical.NAME, dot_bf16_canonical.DESCRIPTION,
                                      dot_bf16_canonical.run, ("cpu",)),
    dot_bf16_batched.NAME: PassInfo(dot_bf16_batched.NAME, dot_bf16_batched.DESCRIPTION,
                                    dot_bf16_batched.run, ("cpu",)),
    reduce_f32_accumulate.NAME: PassInfo(reduce_f32_accumulate.NAME,
                                         reduce_f32_accumulate.DESCRIPTION,
                                         reduce_f32_accumulate.run, ("cpu",)),
    reduce_window_f32.NAME: PassInfo(reduce_window_f32.NAME, reduce_window_f32.DESCRIPTION,
                                     reduce_window_f32.run, ("cpu",)),
    relu_mask_from_output.NAME: PassInfo(relu_mask_from_output.NAME,
                                         relu_mask_from_output.DESCRIPTION,
                                         relu_mask_from_output.run, ("cpu",)),
    # After every pass that writes bf16 converts: the first computes bf16 element-wise chains in
    # float32 and drops the round trips between their links; the second rewrites the
    # conversions left at a function's boundary.
    elementwise_bf16_f32.NAME: PassInfo(elementwise_bf16_f32.NAME, elementwise_bf16_f32.DESCRIPTION,
                                        elementwise_bf16_f32.run, ("cpu",)),
    convert_bf16_bits.NAME: PassInfo(convert_bf16_bits.NAME, convert_bf16_bits.DESCRIPTION,
                                     convert_bf16_bits.run, ("cpu",)),
    # bf16 scan stacks: bit patterns, which XLA:CPU updates in place.
    dus_bf16_bits.NAME: PassInfo(dus_bf16_bits.NAME, dus_bf16_bits.DESCRIPTION,
                                 dus_bf16_bits.run, ("cpu",)),
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
    strip_marks(module)  # a mark in a module from elsewhere is not one of this pipeline's
    for i, name in enumerate(names, start=1):
        info = _REGISTRY[name]
        before = count_ops(module)
        t0 = time.perf_counter()
        rewrites = info.run(module)
        seconds = time.perf_counter() - t0
        records.append(PassRecord(name, rewrites, before, count_ops(module), seconds))
        if dump is not None:
            (dump / f"{i:02d}-{name}.mlir").write_text(str(module))
    strip_marks(module)
    return records


__all__ = ["PassRecord", "available", "default_pipeline", "resolve", "run_pipeline"]
