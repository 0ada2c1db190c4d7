"""The shapes a module this user did not sign hands to a native kernel.

A ``stablehlo.custom_call`` calls a native kernel by name (LAPACK's LU factorisation through
``lapack_sgetrf_ffi``, ...) with buffers of the sizes its operand and result types declare, and
the kernel trusts them: an N×N operand whose factor is declared ``f32[1, 1]`` makes ``sgetrf``
write N·N floats into a one-float buffer and corrupt the process's memory. jax's list of
custom calls "with a stable ABI" says the calling convention is stable, not that any shapes are
safe.

The rule, for every module of an artifact this user did not sign, on every path that compiles
it: each custom call XLA is about to compile must be one that jax's own lowering emits. luxc
rebuilds it: from the call's operand types it lowers, on this machine, the jax primitive that
uses the kernel (``lax.linalg.lu`` for ``*getrf*``, ``lax.linalg.eigh`` for ``*syevd*``, ...)
in each of its settings that reach the kernel (``lower``, ``full_matrices``, ...), and accepts
the call only when one of those lowerings emits the same target with the same operand and result
types and the same attributes (the kernel's settings, layouts, aliasing; no placement on
devices of its own). The module checked is the one XLA compiles: after jax has resolved a
shape-polymorphic module's shapes for the batch size at hand, so every type is static. A call
luxc cannot rebuild (no jax primitive known here for it, a dtype it cannot lower) is refused
too. Only the user's explicit trust in the author (:attr:`NativeCallCheck.allow_unchecked`,
``--allow-unchecked-native-calls``) skips the check.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from jax import lax
from jaxlib.mlir import ir

from luxc.runtime._jax_internal import refine_shapes
from luxc.runtime.compiling._module_ops import walk_operation
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown
from luxc.runtime.trust._module_check import is_device_kernel

_KERNEL = re.compile(r"(?:lapack_[sdcz]|cusolver_|hipsolver_)([a-z]+)_ffi")
_LINALG = lax.linalg
_BOOLS = (True, False)
# kernel -> the jax calls (on the custom call's operands) whose lowering may emit it.
_REBUILDS: dict[str, list[Callable]] = {
    "getrf": [_LINALG.lu],
    "potrf": [functools.partial(_LINALG.cholesky, symmetrize_input=False)],
    "geqrf": [functools.partial(_LINALG.qr, full_matrices=b) for b in _BOOLS],
    "orgqr": [_LINALG.householder_product],
    "ungqr": [_LINALG.householder_product],
    "syevd": [functools.partial(_LINALG.eigh, lower=b) for b in _BOOLS],
    "heevd": [functools.partial(_LINALG.eigh, lower=b) for b in _BOOLS],
    "gesdd": [functools.partial(_LINALG.svd, full_matrices=f, compute_uv=u)
              for f, u in itertools.product(_BOOLS, _BOOLS)],
    "trsm": [functools.partial(_LINALG.triangular_solve, left_side=s, lower=lo, transpose_a=t,
                               conjugate_a=c, unit_diagonal=d)
             for s, lo, t, c, d in itertools.product(*[_BOOLS] * 5)],
    "geev": [functools.partial(_LINALG.eig, compute_left_eigenvectors=left,
                               compute_right_eigenvectors=right)
             for left, right in itertools.product(_BOOLS, _BOOLS)],
    "gees": [functools.partial(_LINALG.schur, compute_schur_vectors=b) for b in _BOOLS],
    "gehrd": [_LINALG.hessenberg],
    "sytrd": [functools.partial(_LINALG.tridiagonal, lower=b) for b in _BOOLS],
    "hetrd": [functools.partial(_LINALG.tridiagonal, lower=b) for b in _BOOLS],
    "gtsv": [_LINALG.tridiagonal_solve],
}
# Attributes jax writes for static shapes only: when the call has one, it must be jax's.
_OPTIONAL = ("mhlo.frontend_attributes", "sdy.sharding_rule")
# Values an attribute has when it is not written.
_DEFAULTS = {"backend_config": '""', "api_version": "1 : i32", "called_computations": "[]",
             "has_side_effect": "false"}
# Distinct calls luxc rebuilds for one module (each costs a few lowerings; jax's own modules
# hold a handful): a module with more is refused rather than checked for minutes.
MAX_DISTINCT_CALLS = 64
_DTYPES = {"f32": np.float32, "f64": np.float64, "complex<f32>": np.complex64,
           "complex<f64>": np.complex128, "i32": np.int32, "i64": np.int64}


@dataclass(frozen=True)
class NativeCallCheck:
    """How to check the native calls of a module this user did not sign: ``what`` names it in
    errors (the artifact and its file); ``allow_unchecked`` skips the check (the user trusts the
    artifact's author: ``--allow-unchecked-native-calls``)."""

    what: str
    allow_unchecked: bool = False
    allow_device_kernels: bool = False  # compiled GPU/TPU kernels (_module_check): opted in

    @staticmethod
    def for_module(targets: set[str], what: str, allow_unchecked: bool = False,
                   allow_device_kernels: bool = False) -> NativeCallCheck | None:
        """The check for a module this user did not sign whose custom-call targets are
        ``targets`` (``None`` when it calls no native kernel: nothing to check)."""
        return NativeCallCheck(what, allow_unchecked, allow_device_kernels) if targets else None


@dataclass(frozen=True)
class _Call:
    target: str
    operands: tuple[str, ...]
    results: tuple[str, ...]
    attributes: tuple[tuple[str, str], ...]  # sorted; without defaults and _OPTIONAL
    optional: tuple[str | None, ...]  # the _OPTIONAL attributes (None: not written)

    def matches(self, reference: _Call) -> bool:
        return (self.target, self.operands, self.results, self.attributes) == (
            reference.target, reference.operands, reference.results, reference.attributes) \
            and all(mine in (None, theirs) for mine, theirs in zip(self.optional,
                                                                   reference.optional))

    def describe(self) -> str:
        return f"({', '.join(self.operands)}) -> ({', '.join(self.results)})"


def _call_of(op: ir.Operation) -> _Call:
    attributes = {name: str(op.attributes[name]) for name in op.attributes}
    optional = tuple(attributes.pop(name, None) for name in _OPTIONAL)
    target = ir.StringAttr(op.attributes["call_target_name"]).value
    return _Call(target, tuple(str(v.type) for v in op.operands),
                 tuple(str(r.type) for r in op.results),
                 tuple(sorted((k, v) for k, v in attributes.items() if _DEFAULTS.get(k) != v)),
                 optional)


def _custom_calls(module: ir.Module) -> tuple[list[_Call], bool]:
    """The module's custom calls, and whether every one of their types is static."""
    calls: list[_Call] = []
    static = True

    def visit(op: ir.Operation) -> None:
        nonlocal static
        if op.name == "stablehlo.custom_call":
            calls.append(_call_of(op))
            static = static and all(
                isinstance(v.type, ir.RankedTensorType) and v.type.has_static_shape
                for v in [*op.operands, *op.results])

    walk_operation(module.operation, visit)
    return calls, static


def _aval(type_text: str) -> jax.ShapeDtypeStruct | None:
    found = re.fullmatch(r"tensor<((?:\d+x)*)([a-z0-9<>]+)>", type_text)
    if not found or found[2] not in _DTYPES:
        return None
    shape = tuple(int(d) for d in found[1].split("x") if d)
    return jax.ShapeDtypeStruct(shape, _DTYPES[found[2]])


@functools.lru_cache(maxsize=256)
def _references(target: str, operands: tuple[str, ...]) -> tuple[_Call, ...] | None:
    """Every call to ``target`` that jax's own lowering emits on these operand types (``None``
    when luxc knows no jax primitive for ``target`` or cannot lower these types)."""
    kernel = _KERNEL.fullmatch(target)
    avals = [_aval(t) for t in operands]
    if kernel is None or kernel[1] not in _REBUILDS or None in avals:
        return None
    found: list[_Call] = []
    # 64-bit operands (a module exported with jax_enable_x64) are lowered as such.
    with jax.enable_x64(any(np.dtype(a.dtype).itemsize == 8 and a.dtype != np.complex64
                            for a in avals)):
        for fn in _REBUILDS[kernel[1]]:
            try:
                module = jax.jit(fn).lower(*avals).compiler_ir("stablehlo")
            except Exception:  # noqa: BLE001, S112 - not a use of the primitive: no reference
                continue
            found.extend(c for c in _custom_calls(module)[0] if c.target == target)
    return tuple(found)


def check_module(module: ir.Module, check: NativeCallCheck) -> None:
    """Raise :class:`ArtifactError` unless every custom call of ``module`` (a lowered module
    about to be compiled) is one jax's own lowering emits (see the module docstring); nothing
    when the user allowed unchecked calls."""
    calls, _ = _custom_calls(module)
    if not calls or check.allow_unchecked:
        return
    try:  # what jax does before XLA compiles a shape-polymorphic module; a no-op on others
        calls, static = _custom_calls(refine_shapes(module))
    except ValueError:
        static = False
    if not static:
        raise ArtifactError(f"{check.what}: the shapes its StableHLO passes to native kernels "
                            "cannot be resolved; luxc refuses it from an artifact this user did "
                            "not sign: recompile it from its source")
    distinct = list(dict.fromkeys(calls))
    if len(distinct) > MAX_DISTINCT_CALLS:
        raise ArtifactError(f"{check.what}: its StableHLO calls native kernels in {len(distinct)} "
                            f"different ways; luxc checks at most {MAX_DISTINCT_CALLS} in an "
                            "artifact this user did not sign: recompile it from its source, or "
                            "pass allow_unchecked_native_calls=True if you trust its author")
    for call in distinct:
        if check.allow_device_kernels and is_device_kernel(call.target):
            continue
        references = _references(call.target, call.operands)
        if references is None:
            raise ArtifactError(
                f"{check.what}: its StableHLO calls the native kernel {shown(call.target, 200)}, "
                "whose buffer shapes luxc cannot check on this machine (a wrong shape corrupts "
                "memory), from an artifact this user did not sign; recompile it from its "
                "source, or pass allow_unchecked_native_calls=True if you trust its author")
        if not any(call.matches(r) for r in references):
            raise ArtifactError(
                f"{check.what}: its StableHLO calls the native kernel {shown(call.target, 200)} "
                f"with {shown(call.describe(), 400)}, which jax's own lowering never emits (the "
                "kernel would write outside its buffers); luxc refuses it from an artifact this "
                "user did not sign: recompile it from its source, or pass "
                "allow_unchecked_native_calls=True if you trust its author")


def check_lowered(lowered: jax.stages.Lowered, check: NativeCallCheck | None) -> None:
    """:func:`check_module` on the module ``lowered`` compiles (nothing when ``check`` is
    ``None``: a module this user signed)."""
    if check is not None:
        check_module(lowered.compiler_ir("stablehlo"), check)
