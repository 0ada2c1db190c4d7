"""From a pure step function to a cached XLA executable called through jax's C++ dispatch.

    fn, example args ──jax.export──▶ StableHLO ──luxc.passes──▶ StableHLO' ──XLA──▶ Compiled

The rewritten module goes back into a ``jax.export.Exported``, and ``jax.jit(exported.call)``
is lowered and compiled: the resulting ``jax.stages.Compiled`` is called directly, so a cache
hit costs what a hand-written ``jax.jit`` call costs (the arguments' signature is checked in
C++). The exported module is also the portable, versioned artifact ``luxc compile`` writes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export
from jaxlib.mlir.dialects import stablehlo

from luxc.passes import PassRecord, run_pipeline
from luxc.runtime._jax_internal import (
    deserialize_module,
    direct_call,
    exclude_from_tracebacks,
    ir_context,
    lapack_initialization,
    needs_lapack,
    serialize_module,
)
from luxc.runtime.caching import persistent_cache
from luxc.runtime.compiling._module_ops import remember, summary
from luxc.runtime.compiling._options import DEFAULT, CompileOptions, platform_xla_options
from luxc.runtime.compiling._stages import CompiledStages, Stage
from luxc.runtime.compiling._unclaimed_dots import withdraw_batched_dots, without_batched_dots
from luxc.runtime.compiling._workspace import WorkspaceCall, with_workspace
from luxc.runtime.messages._leaf_names import leaf_name
from luxc.runtime.messages._warn import warn_user
from luxc.runtime.trust._native_calls import NativeCallCheck, check_lowered


class DonationWarning(UserWarning):
    """XLA could not reuse a donated input buffer for an output."""


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.Array):
        sharding = x.sharding if len(x.sharding.device_set) > 1 else None
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return x


def _exclude_luxc_frames() -> None:
    # An op made inside luxc (nn.Conv, the training step) is located at the user's line that
    # called into luxc: the line `luxc profile --ops` names. The front end's directory comes
    # from its import spec (runtime/ does not import the front end).
    dirs = [Path(__file__).parents[1], Path(run_pipeline.__code__.co_filename).parent]
    dirs += [Path(d) for d in importlib.util.find_spec("luxc").submodule_search_locations]
    for d in dirs:
        exclude_from_tracebacks(str(d) + os.sep)


def export(fn: Callable, args: Sequence[Any], *, platforms: Sequence[str] | None = None,
           precision: str = "default") -> jax_export.Exported:
    """Trace ``fn(*args)`` once and lower it to StableHLO (one public ``main``).

    ``jax.nn.softmax`` is traced with jax's own softmax derivative (``jax.softmax_custom_jvp``:
    ``ẏ = y ⊙ (ẋ − Σ y ẋ)``) instead of the derivative of its ``exp / sum`` steps, whatever the
    process's setting: the same values to rounding, with fewer passes over attention's
    ``(batch, heads, T, T)`` scores (on the benchmark's transformer block, 11 element-wise
    operations of that shape per step instead of 13; ``benchmarks/README.md``, "Levers")."""
    _exclude_luxc_frames()
    abstract = jax.tree_util.tree_map(_abstract, tuple(args))
    with jax.default_matmul_precision(None if precision == "default" else precision), \
            jax.softmax_custom_jvp(True):
        return jax_export.export(jax.jit(fn), platforms=platforms)(*abstract)


def rewrite(exported: jax_export.Exported, pass_names: Sequence[str],
            dump_dir: str | None = None) -> tuple[jax_export.Exported, list[PassRecord]]:
    """Run luxc's passes on the exported module; return the new Exported and the records."""
    if not pass_names and dump_dir is None:
        return exported, []
    with ir_context() as ctx:
        module = deserialize_module(exported.mlir_module_serialized, ctx)
        records = run_pipeline(module, pass_names, dump_dir)
        if not any(r.rewrites for r in records):
            remember(exported.mlir_module_serialized, module)  # the compile's summary, unparsed
            return exported, records
        data = serialize_module(module, _TARGET_VERSION)
        remember(data, module)
    return dataclasses.replace(exported, mlir_module_serialized=data), records


# The target jax.export itself uses: a jaxlib up to four weeks older can still load the module.
_TARGET_VERSION = stablehlo.get_version_from_compatibility_requirement(
    stablehlo.StablehloCompatibilityRequirement.WEEK_4
)


def module_text(serialized: bytes) -> str:
    with ir_context() as ctx:
        return str(deserialize_module(serialized, ctx))


def compile_exported(exported: jax_export.Exported, args: Sequence[Any], *,
                     donate_argnums: tuple[int, ...] = (),
                     xla_options: dict[str, Any] | None = None,
                     arg_names: Sequence[str] | None = None,
                     cache: Any = None,
                     timings: dict[str, float] | None = None,
                     native_check: NativeCallCheck | None = None
                     ) -> tuple[jax.stages.Compiled, float]:
    """Compile ``exported`` for the local devices; return the executable and the seconds taken.

    The compile reads and writes ``cache`` (default: luxc's persistent cache, when enabled).
    ``xla_options`` are added to luxc's platform defaults for this module
    (:func:`luxc.runtime.compiling._options.platform_xla_options`); the caller's win.

    A donated buffer that no output can reuse is reported as a :class:`DonationWarning` naming
    the input, never silently freed. ``timings`` (when given) receives the seconds of each
    phase: ``"module summary"``, ``"lowering"``, ``"XLA compile"``. ``native_check`` (a module
    this user did not sign) checks its native calls before XLA compiles it
    (:mod:`luxc.runtime.trust._native_calls`).
    """
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    serializable = cache is not None or persistent_cache.active() is not None
    module = summary(exported.mlir_module_serialized)
    options = {**platform_xla_options(jax.default_backend(), module, serializable=serializable),
               **(xla_options or {})}
    t1 = time.perf_counter()
    with lapack_initialization(needs_lapack(module.custom_call_targets)):
        lowered = jax.jit(exported.call, donate_argnums=donate_argnums,
                          compiler_options=options or None).lower(*args)
    check_lowered(lowered, native_check)
    t2 = time.perf_counter()
    with persistent_cache.compiling(cache):
        compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    timings.update({"module summary": t1 - t0, "lowering": t2 - t1,
                    "XLA compile": seconds - (t2 - t0)})
    if donate_argnums:
        _check_donation(exported, args, donate_argnums, arg_names)
    return compiled, seconds


def _check_donation(exported: jax_export.Exported, args: Sequence[Any],
                    donate_argnums: tuple[int, ...], arg_names: Sequence[str] | None) -> None:
    # jax hands a donation it cannot match to XLA as "may alias" and says nothing; XLA can only
    # reuse a buffer for an output of the same shape and dtype, so an unmatched one is freed
    # without being updated in place.
    free = Counter((tuple(a.shape), str(a.dtype)) for a in exported.out_avals)
    unusable = []
    for i in donate_argnums:
        name = arg_names[i] if arg_names and i < len(arg_names) else f"argument {i}"
        for path, leaf in jax.tree_util.tree_flatten_with_path(args[i])[0]:
            key = (tuple(np.shape(leaf)), str(leaf.dtype))
            if free[key]:
                free[key] -= 1
            else:
                unusable.append(f"{leaf_name(name, path)} ({key[1]}{list(key[0])})")
    if unusable:
        warn_user(
            f"XLA cannot update {', '.join(unusable[:5])}{' …' if len(unusable) > 5 else ''} in "
            "place: no output of the step has that shape and dtype, so the donated buffer is "
            "freed without being reused (does the optimizer change a state leaf's dtype or "
            "shape?)", DonationWarning)


class Executable(CompiledStages):
    """A compiled program and how it was made: the stages' text, the pass report, XLA's
    figures. ``call(*args)`` runs the program (jax's C++ dispatch)."""

    def __init__(self, traced: jax_export.Exported, optimized: jax_export.Exported,
                 compiled: jax.stages.Compiled, pass_report: list[PassRecord],
                 compile_seconds: float, trace_seconds: float, call: Callable | None = None,
                 timings: dict[str, float] | None = None,
                 xla_options: dict[str, Any] | None = None):
        self.traced, self.optimized, self.compiled = traced, optimized, compiled
        self.pass_report = pass_report
        # Seconds of each phase of build (trace + export, each pass, …, XLA compile), in order;
        # the XLA options it was compiled with (profile_ops recompiles with the same).
        self.timings = dict(timings or {})
        self.xla_options = dict(xla_options or {})
        self.compile_seconds, self.trace_seconds = compile_seconds, trace_seconds
        # With CompileOptions(autotune=True): the candidates timed and the one kept.
        self.autotune_report: Any = None
        # The hot path: no Python between the caller and jax's C++ dispatch.
        self.call = direct_call(compiled) if call is None else call
        # The scan buffers kept between calls (their types) and the module taking them.
        self.workspace: tuple[jax.ShapeDtypeStruct, ...] = ()
        self.workspace_module: jax_export.Exported | None = None

    def _stage_text(self, stage: Stage) -> str:
        if stage == "traced":
            return module_text(self.traced.mlir_module_serialized)
        if stage == "optimized":  # what XLA compiled: with the scan buffers it keeps, if any
            module = self.workspace_module or self.optimized
            return module_text(module.mlir_module_serialized)
        return self.compiled.as_text()

    def _figures_source(self) -> jax.stages.Compiled:
        return self.compiled


def settle(traced: jax_export.Exported, records: list[PassRecord], compiled: jax.stages.Compiled,
           dump_dir: str | None) -> tuple[jax_export.Exported, list[PassRecord]] | None:
    """The module to compile again, and its records, when XLA did not give the batched bf16
    dots ``dot_bf16_batched`` wrote to YNNPACK (:mod:`luxc.runtime.compiling._unclaimed_dots`):
    ``traced`` rewritten by the same passes less that one. ``None``: keep ``compiled``."""
    if not withdraw_batched_dots(records, compiled.as_text):
        return None
    return rewrite(traced, without_batched_dots([r.name for r in records]), dump_dir)


def optimise(fn: Callable, args: Sequence[Any], options: CompileOptions,
             platforms: Sequence[str], timings: dict[str, float] | None = None
             ) -> tuple[jax_export.Exported, jax_export.Exported, list[PassRecord], float]:
    """Trace ``fn(*args)`` for ``platforms`` and run the passes every one of them takes; return
    the traced and the optimised module, the pass records and the seconds taken. ``timings``
    (when given) receives ``"trace + export"``, each ``"pass <name>"`` and the module's
    ``"module parse + serialize"``."""
    t0 = time.perf_counter()
    platforms = list(platforms)
    traced = export(fn, args, platforms=platforms, precision=options.precision)
    t1 = time.perf_counter()
    # One module serves every target: keep only the passes each target's pipeline has.
    per_platform = [options.pass_names(p, args) for p in platforms]
    names = tuple(p for p in per_platform[0] if all(p in other for other in per_platform[1:]))
    optimized, records = rewrite(traced, names, options.dump_dir)
    seconds = time.perf_counter() - t0
    if timings is not None:
        timings["trace + export"] = t1 - t0
        timings.update({f"pass {r.name}": r.seconds for r in records})
        timings["module parse + serialize"] = seconds - (t1 - t0) - sum(r.seconds for r in records)
    return traced, optimized, records, seconds


def build(fn: Callable, args: Sequence[Any], *, options: CompileOptions = DEFAULT,
          donate_argnums: tuple[int, ...] = (), arg_names: Sequence[str] | None = None,
          platform: str | None = None, committed_outputs: bool = True) -> Executable:
    """Trace, rewrite and compile ``fn`` for ``args``: the whole AutoXLA pipeline.

    ``committed_outputs=False`` calls ``jax.jit(fn)`` instead, whose outputs stay uncommitted
    to a device (as an eager user's arrays are: the eager backends' update); the exported
    module's own call commits its outputs to the device it was compiled for, so an eager user
    could no longer mix them with arrays placed elsewhere. The default calls the compiled
    executable directly (its outputs are committed), with the scan buffers it keeps between
    calls (:mod:`luxc.runtime.compiling._workspace`)."""
    timings: dict[str, float] = {}
    platform = platform or jax.default_backend()
    traced, optimized, records, trace_seconds = optimise(fn, args, options, [platform], timings)
    compile_options = {"donate_argnums": donate_argnums, "arg_names": arg_names,
                       "xla_options": dict(options.xla_options)}
    kept = platform if committed_outputs else None
    compiled, seconds, workspace = _compile(optimized, args, kept, compile_options, timings)
    again = settle(traced, records, compiled, options.dump_dir)
    if again is not None:
        optimized, records = again
        compiled, more, workspace = _compile(optimized, args, kept, compile_options, {})
        seconds += more
    call = None if committed_outputs else jax.jit(fn, donate_argnums=donate_argnums)
    if workspace:
        call = WorkspaceCall(direct_call(compiled), workspace[1], compiled.input_shardings[0][-1])
    exe = Executable(traced, optimized, compiled, records, seconds, trace_seconds,
                     call=call, timings=timings,
                     xla_options=dict(options.xla_options))
    if workspace:
        exe.workspace, exe.workspace_module = workspace[1], workspace[0]
    if options.dump_dir is not None:
        Path(options.dump_dir, "99-xla-optimized.hlo.txt").write_text(compiled.as_text())
    return exe


def _compile(optimized: jax_export.Exported, args: Sequence[Any], platform: str | None,
             compile_options: dict[str, Any], timings: dict[str, float]
             ) -> tuple[jax.stages.Compiled, float, tuple | None]:
    """Compile ``optimized``, with its scan buffers kept between calls when ``platform`` allows
    it (``None``: never); return the executable, the seconds and ``(module, buffers)`` or
    ``None``."""
    if platform is None:
        return (*compile_exported(optimized, args, timings=timings, **compile_options), None)
    t0 = time.perf_counter()
    lifted, avals = with_workspace(optimized, platform, _TARGET_VERSION)
    timings["scan buffers"] = lifting = time.perf_counter() - t0
    if not avals:
        compiled, seconds = compile_exported(optimized, args, timings=timings, **compile_options)
        return compiled, seconds + lifting, None
    options = {**compile_options,
               "donate_argnums": (*compile_options["donate_argnums"], len(args))}
    compiled, seconds = compile_exported(lifted, (*args, avals), timings=timings, **options)
    return compiled, seconds + lifting, (lifted, avals)
