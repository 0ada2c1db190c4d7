"""CompileOptions: what a user can change about how a step is compiled (Reactant's
``CompileOptions`` role). Changing any field compiles a new executable; equal options hit the
cache: ``None`` is ``CompileOptions()``, a list of pass names equals the tuple (or the
comma-separated string), and XLA option dicts compare in any order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax

from luxc.passes import resolve
from luxc.runtime.compiling._module_ops import ModuleSummary

Precision = Literal["default", "high", "highest"]
_PRECISIONS = ("default", "high", "highest")
MixedPrecision = Literal["bf16", "f16"] | None
MIXED_PRECISIONS = (None, "bf16", "f16")
XlaValue = bool | int | float | str


@dataclass(frozen=True)
class CompileOptions:
    """How to compile a training step.

    Args:
        passes: the StableHLO pass pipeline: ``"default"`` (the passes measured faster on the
            target platform), ``"none"``, ``"all"``, or a sequence of pass names
            (``luxc.passes.available()``).
        xla_options: XLA debug options for this executable, e.g.
            ``{"xla_cpu_enable_fast_math": True}`` (passed to XLA's compile, not the process).
        precision: dot/convolution precision, ``"default"``, ``"high"`` or ``"highest"`` (Lux's
            ``precision_config`` preference).
        dump_dir: write the module before and after every pass, and XLA's optimised HLO, here.
        mixed_precision: ``None`` (float32 throughout), ``"bf16"`` or ``"f16"``: the parameters
            and the data are cast to that dtype inside the step, the parameters and optimiser
            state stay float32, losses, normalisation statistics and gradients are float32
            (README "Mixed precision"); ``"f16"`` adds dynamic loss scaling.
        microbatches: ``k`` ≥ 1: gradient accumulation inside the one compiled step; the
            leading axis of every data leaf is split into ``k`` equal parts, run one after the
            other, their losses, statistics and gradients averaged, one optimiser update
            (a BatchNorm sees per-part statistics; README "Deep models").
        autotune: compile a few candidate configurations of the step (on CPU: these
            options, ``passes="none"``, YNNPACK fusions off, fusion emitters off), time each
            on a copy of the arguments and keep the fastest; the choice and the measured
            alternatives are the step's ``autotune_report`` (:mod:`luxc.runtime.compiling._autotune`).

    >>> import luxc
    >>> luxc.CompileOptions(passes=["fuse_rsqrt"], precision="highest").precision
    'highest'
    """

    passes: str | tuple[str, ...] = "default"
    xla_options: tuple[tuple[str, XlaValue], ...] = field(default=())
    precision: Precision = "default"
    dump_dir: str | None = None
    mixed_precision: MixedPrecision = None
    microbatches: int = 1
    autotune: bool = False

    def __init__(
        self,
        passes: str | Sequence[str] = "default",
        xla_options: Mapping[str, XlaValue] | Sequence[tuple[str, XlaValue]] | None = None,
        precision: Precision = "default",
        dump_dir: str | Path | None = None,
        mixed_precision: MixedPrecision = None,
        microbatches: int = 1,
        autotune: bool = False,
    ):
        if isinstance(passes, str) and passes not in ("default", "none", "all"):
            passes = passes.split(",")
        if not isinstance(passes, str):
            # A list, a tuple and "a,b" name the same pipeline, hence the same program key.
            passes = tuple(p.strip() for p in passes if p.strip())
        resolve(passes, "cpu")  # validates names now, not inside a later compile
        if precision not in _PRECISIONS:
            raise ValueError(
                f"CompileOptions: precision must be one of {', '.join(map(repr, _PRECISIONS))}; "
                f"received {precision!r}"
            )
        if mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"CompileOptions: mixed_precision must be one of "
                f"{', '.join(map(repr, MIXED_PRECISIONS))}; received {mixed_precision!r}"
            )
        if not isinstance(microbatches, int) or isinstance(microbatches, bool) or microbatches < 1:
            raise ValueError(f"CompileOptions: microbatches must be an int >= 1; "
                             f"received {microbatches!r}")
        if not isinstance(autotune, bool):
            raise ValueError(f"CompileOptions: autotune must be True or False; received {autotune!r}")
        items = dict(xla_options or {})
        for k, v in items.items():
            if not (isinstance(k, str) and k.startswith("xla_")):
                raise ValueError(f"CompileOptions: XLA option names start with 'xla_'; received {k!r}")
            if not isinstance(v, bool | int | float | str):
                raise ValueError(f"CompileOptions: XLA option {k} must be a bool, number or string; "
                                 f"received {type(v).__name__}")
        object.__setattr__(self, "passes", passes)
        object.__setattr__(self, "xla_options", tuple(sorted(items.items())))
        object.__setattr__(self, "precision", precision)
        object.__setattr__(self, "dump_dir", None if dump_dir is None else str(dump_dir))
        object.__setattr__(self, "mixed_precision", mixed_precision)
        object.__setattr__(self, "microbatches", microbatches)
        object.__setattr__(self, "autotune", autotune)

    @property
    def scales_loss(self) -> bool:
        """Whether the step scales its loss dynamically: float16 mixed precision
        (``mixed_precision="f16"``), whose small gradients would underflow unscaled. The one
        test of it: the training kinds, the step and the artifact's state layout ask here.

        >>> CompileOptions(mixed_precision="f16").scales_loss, CompileOptions("none").scales_loss
        (True, False)
        """
        return self.mixed_precision == "f16"

    def pass_names(self, platform: str, args: Sequence[Any] = ()) -> tuple[str, ...]:
        """The pass pipeline for ``platform``; with the step's ``args``, the default pipeline
        leaves out the passes their layout makes slower (``_DEFAULT_UNLESS``)."""
        names = resolve(self.passes, platform)
        if self.passes != "default":
            return names  # a pipeline the user named runs as named
        return tuple(n for n in names if n not in _DEFAULT_UNLESS or not _DEFAULT_UNLESS[n](args))


DEFAULT = CompileOptions()


def splits_an_inner_axis(args: Sequence[Any]) -> bool:
    """Whether some array of rank ≥ 3 among ``args`` (any pytree) is split over devices along
    an axis other than its first."""
    for leaf in jax.tree.leaves(args):
        sharding, shape = getattr(leaf, "sharding", None), getattr(leaf, "shape", ())
        if sharding is None or len(shape) < 3:
            continue
        if tuple(sharding.shard_shape(tuple(shape)))[1:] != tuple(shape)[1:]:
            return True
    return False


# Default passes left out for a step whose arguments make them slower (a pass named by the user
# always runs). dot_flatten merges (batch, tokens) into one axis; when an axis after the first is
# split over devices (tokens, or features under model parallelism), the partitioner cannot keep
# the merged axis split and gathers the activations on every device (same values, two more
# all-gathers a step on a token-split sequence model). Leading-axis data parallelism and FSDP's
# matrices are unaffected; FSDP-split convolution kernels count too (LeNet's one rewrite there
# was neutral).
_DEFAULT_UNLESS: dict[str, Callable[[Sequence[Any]], bool]] = {"dot_flatten": splits_an_inner_axis}


def normalise(options: CompileOptions | None) -> CompileOptions:
    """``None`` is the default options (one program key for both)."""
    if options is None:
        return DEFAULT
    if not isinstance(options, CompileOptions):
        raise TypeError(f"compile_options must be a luxc.CompileOptions or None; "
                        f"received {type(options).__name__}")
    return options


# XLA options luxc adds for a platform, from what the module holds (a user's own xla_options
# always win): where the module convolves, YNNPACK for reductions only (its convolutions and
# dots off; with none, XLA rewrites a BatchNorm's reductions into slow reduce-windows);
# temporaries in heaps of at most 30 MiB. Why, and the measurements: benchmarks/README.md,
# "Platform XLA options".
_CPU_CONVOLUTION_OPTIONS: dict[str, XlaValue] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
_CPU_HEAP_BYTES = 30 << 20
_HEAP_OPTION = "xla_multiheap_size_constraint_per_heap"
_INT32_MAX = 2**31 - 1


def platform_xla_options(platform: str, module: ModuleSummary, *,
                         serializable: bool = False) -> dict[str, XlaValue]:
    """The XLA options luxc sets by default on ``platform`` for a module (its
    :class:`~luxc.runtime.compiling._module_ops.ModuleSummary`); ``serializable``: the executable will be
    written out (an artifact, the persistent cache)."""
    if platform != "cpu":
        return {}
    options: dict[str, XlaValue] = {}
    heap = max(_CPU_HEAP_BYTES, module.largest_tensor_bytes)
    # XLA reads the limit as an int32 (beyond it: XLA's one heap), and XLA:CPU cannot serialize
    # an executable whose temporaries span several buffers ("Multiple temp buffer allocations
    # found"): an artifact or a persistent-cache entry keeps the one heap.
    if heap <= _INT32_MAX and not serializable:
        options[_HEAP_OPTION] = heap
    if "stablehlo.convolution" in module.op_names:
        options.update(_CPU_CONVOLUTION_OPTIONS)
    return options
