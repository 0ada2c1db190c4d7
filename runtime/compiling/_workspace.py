"""The buffers a compiled step keeps between calls: its scans' stacked buffers
(:mod:`._scan_buffers`) and the stacks its loops read (:mod:`._stack_buffers`).

:func:`with_workspace` lifts a module's overwritten buffers into trailing arguments and
results; :class:`WorkspaceCall` is the step's call: it donates to each call the buffers the
previous call returned, so they are allocated (and their pages mapped) once, not every step.
The price is memory: the buffers stay allocated between calls, as large as the stacked
residuals the step writes anyway (``Executable.workspace`` gives their shapes; XLA's
``memory_analysis()`` counts them with the arguments).

Only where it pays and is simple: XLA:CPU (whose allocator maps each large temporary afresh),
one device, one platform, static shapes, no ordered effects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from luxc.runtime._jax_internal import (
    deserialize_module,
    ir_context,
    serialize_module,
    with_trailing_buffers,
)
from luxc.runtime.compiling._module_ops import known_summary, remember
from luxc.runtime.compiling._scan_buffers import lift_scan_buffers
from luxc.runtime.compiling._stack_buffers import lift_stacks

# Off for a comparison (benchmarks/README.md, "Levers"). The rewrite changes no value the
# program computes, only what XLA allocates; tests/runtime/test_scan_buffers.py compares bits.
ENABLED = True
# The stacks a loop reads (`_stack_buffers`: `nn.Chain`'s looped runs); off for a comparison.
LIFT_STACKS = True
# Smaller buffers are left to XLA: for them the extra donated arguments cost jax's dispatch
# about what the fill costs XLA. A 4-block Stack of Dense(16, 16) (buffers of 0.5-1 KiB) took
# 60 -> 66 us a step with them kept; Dense(128, 128) at batch 64 (128 KiB) 600 -> 622 us; at
# batch 512 (1 MiB) 2,970 -> 2,913 us (interleaved in one process, on a machine busy with
# the test suite). The GPT's weight-gradient stacks are 384 KiB.
MIN_BYTES = 1 << 18


def _eligible(exported: Any, platform: str) -> bool:
    return (ENABLED and platform == "cpu" and exported.nr_devices == 1
            and tuple(exported.platforms) == ("cpu",) and not exported.ordered_effects
            and all(isinstance(d, int) for a in exported.in_avals for d in a.shape))


def with_workspace(exported: Any, platform: str, target_version: str
                   ) -> tuple[Any, tuple[jax.ShapeDtypeStruct, ...]]:
    """``exported`` with its overwritten scan buffers as trailing arguments and results
    (called ``call(*args, buffers) -> (outputs, buffers)``), and those buffers' types; or
    ``exported`` unchanged and ``()``."""
    if not _eligible(exported, platform):
        return exported, ()
    known = known_summary(exported.mlir_module_serialized)
    if known is not None and "stablehlo.while" not in known.op_names:
        return exported, ()  # no loop: not worth parsing the module again
    with ir_context() as ctx:
        module = deserialize_module(exported.mlir_module_serialized, ctx)
        lifted = lift_scan_buffers(module, MIN_BYTES)
        if LIFT_STACKS:
            lifted += lift_stacks(module, MIN_BYTES)
        if not lifted or any(b.dtype not in _DTYPES for b in lifted):
            return exported, ()
        data = serialize_module(module, target_version)
        remember(data, module)  # the compile's module summary, without parsing it again
    avals = tuple(jax.ShapeDtypeStruct(b.shape, _DTYPES[b.dtype]) for b in lifted)
    return with_trailing_buffers(exported, data, avals), avals


_DTYPES = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": jax.numpy.bfloat16,
           "i32": np.int32, "i64": np.int64, "i16": np.int16, "i8": np.int8,
           "ui64": np.uint64, "ui32": np.uint32, "ui16": np.uint16, "ui8": np.uint8, "i1": np.bool_,
           "complex<f32>": np.complex64, "complex<f64>": np.complex128}


def _failed(buffers: tuple[jax.Array, ...]) -> bool:
    """Whether the call that wrote ``buffers`` failed after it returned (an input computed
    asynchronously whose computation failed): they carry its error, and every later call given
    them would fail with it. Only buffers already written are asked: this never waits."""
    if not all(b.is_ready() for b in buffers):
        return False
    try:
        jax.block_until_ready(buffers)
    except Exception:  # noqa: BLE001 - whatever the failed call raised; its caller saw it
        return True
    return False


class WorkspaceCall:
    """``call(*args)`` of a step compiled with trailing buffers: each call gets the buffers
    the last call returned (zeros the first time), donated, and returns the step's outputs.

    Calls from several threads at once each get their own buffers (one set is kept after)."""

    def __init__(self, call: Callable, avals: tuple[jax.ShapeDtypeStruct, ...],
                 sharding: Any):
        self._call, self._avals, self._sharding = call, avals, sharding
        self._spare: list[tuple[jax.Array, ...]] = []

    def _fresh(self) -> tuple[jax.Array, ...]:
        # numpy zeros placed on the device: no program to compile for them (a first step's time).
        return tuple(jax.device_put(np.zeros(a.shape, a.dtype), s)
                     for a, s in zip(self._avals, self._sharding, strict=True))

    def __call__(self, *args: Any) -> Any:
        try:
            buffers = self._spare.pop()
            if _failed(buffers):
                buffers = self._fresh()
        except IndexError:  # the first call, or another thread holds the kept set
            buffers = self._fresh()
        try:
            outputs, buffers = self._call(*args, buffers)
        except BaseException:
            # jax checks the arguments before it takes the donated buffers: a refused call
            # leaves them whole for the next one.
            if not any(b.is_deleted() for b in buffers):
                self._keep(buffers)
            raise
        self._keep(buffers)
        return outputs

    def _keep(self, buffers: tuple[jax.Array, ...]) -> None:
        if not self._spare:
            self._spare.append(buffers)
