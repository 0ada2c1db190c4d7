"""The model's forward pass and its objective without an update, as an artifact stores them:
what ``luxc predict``, ``luxc.load(DIR).predict(x)`` and ``luxc run --eval-data`` run, without the
model's source.

``forward.jaxexport`` holds ``forward(*parameters, *states, x) -> outputs``: the model in test
mode, ``model(x, ps, testmode(st))`` (the model state it returns is dropped), with the batch axis
of ``x`` symbolic (jax.export shape polymorphism), so one module serves any batch size. Its
parameters and states are the first ``n_parameters`` and the last ``n_states`` leaves of the
step's flat state (the artifact's own, or a checkpoint's). The manifest's ``forward`` entry
records those counts, ``x``'s trailing shape and dtype, and the number of outputs.
``evaluate.jaxexport`` likewise holds ``evaluate(*parameters, *states, *data) -> (loss,
*stats)``, the objective in test mode, every data array's batch axis the same symbol; its entry,
``evaluate``, lists the data arrays' trailing shapes and dtypes (``inputs``).

Trust: as for the step. The module of an artifact this user did not sign is checked in an
isolated child first (:func:`~luxc.runtime.trust._module_check.check_untrusted`) and then run where
Ctrl-C stops it; no executable is stored for it: it is always compiled from its StableHLO, once
per batch size, with no XLA option taken from the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from luxc.runtime.artifacts._format import EVALUATE_FILE, FORWARD_FILE
from luxc.runtime.artifacts._manifest import Manifest, ProgramSpec
from luxc.runtime.caching import persistent_cache
from luxc.runtime.caching.persistent_cache import MemoryCache
from luxc.runtime.compiling._executable import compile_exported
from luxc.runtime.data._npy_rows import NpyRows, cast, open_npy
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown
from luxc.runtime.trust._guarded_call import deadline_after, guarded
from luxc.runtime.trust._module_check import check_untrusted
from luxc.runtime.trust._native_calls import NativeCallCheck, check_lowered


class _Program:
    """A stored module over ``(*parameters, *states, *inputs)``, its inputs' batch axis
    symbolic; compiled once per batch size, run where Ctrl-C stops it when not signed."""

    def __init__(self, exported: jax_export.Exported, spec: ProgramSpec, signed: bool,
                 native_check: NativeCallCheck | None = None):
        self.exported, self._signed, self._native_check = exported, signed, native_check
        self.n_parameters, self.n_states = spec.n_parameters, spec.n_states
        self._compiled: dict[tuple, Any] = {}

    @property
    def signed_by_this_user(self) -> bool:
        """Whether this user's luxc wrote it (else it runs where Ctrl-C stops it)."""
        return self._signed

    def check_native_calls(self, batch: int) -> None:
        """Refuse now (at load) a module whose native calls fail the check at ``batch``
        samples; every batch size is checked again when it is compiled."""
        if self._native_check is None:
            return
        n_state = self.n_parameters + self.n_states
        try:
            example = [jax.ShapeDtypeStruct((batch, *a.shape[1:]) if i >= n_state else a.shape,
                                            a.dtype)
                       for i, a in enumerate(self.exported.in_avals)]
            lowered = jax.jit(self.exported.call).lower(*example)
        except Exception:  # noqa: BLE001 - not a batch size it takes: checked when compiled
            return
        check_lowered(lowered, self._native_check)

    def _run(self, state: Sequence[Any], inputs: list[np.ndarray], what: str,
             deadline: float | None = None,
             stop: Callable[[], bool] | None = None) -> list[np.ndarray]:
        args = [*state[:self.n_parameters], *state[len(state) - self.n_states:], *inputs]
        key = tuple(x.shape[0] for x in inputs)
        if key not in self._compiled:
            example = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in args]
            self._compiled[key], _ = compile_exported(
                self.exported, example, cache=persistent_cache.active() or MemoryCache(),
                native_check=self._native_check)
        compiled = self._compiled[key]

        def call() -> list[np.ndarray]:
            return [np.asarray(y) for y in compiled(*args)]

        return call() if self._signed and deadline is None else guarded(call, deadline, what,
                                                                          stop)


class Forward(_Program):
    """The stored forward pass; ``forward(state, x)`` returns the model's outputs (host
    arrays) for ``x`` of shape ``(b, *input_shape)``, any ``b >= 1``."""

    def __init__(self, exported: jax_export.Exported, manifest: Manifest, signed: bool,
                 native_check: NativeCallCheck | None = None):
        spec = manifest.forward
        assert spec is not None  # load_forward loads it only then
        super().__init__(exported, spec, signed, native_check)
        (x,) = spec.inputs
        self.input_shape, self.input_dtype = x.shape, np.dtype(x.dtype)
        _check_signature(exported, manifest, spec, FORWARD_FILE)

    def describe_input(self) -> str:
        return f"{self.input_dtype}[b, {', '.join(map(str, self.input_shape))}]".replace(", ]", "]")

    def check_input(self, shape: Sequence[int], dtype: np.dtype, what: str = "x") -> None:
        """One line naming ``what`` when an input of this shape and dtype is not what the
        model takes: the trailing shape, and a dtype of the same kind (it is then cast)."""
        wrong = None
        if tuple(shape[1:]) != self.input_shape or len(shape) != len(self.input_shape) + 1:
            wrong = f"shape {list(shape)}"
        elif np.dtype(dtype).kind != self.input_dtype.kind:
            wrong = f"dtype {dtype}"
        elif shape[0] == 0:
            wrong = "no samples (its leading axis is 0)"
        if wrong:
            raise ArtifactError(f"{what} has {wrong}; the model takes {self.describe_input()} "
                                "(any batch size b >= 1)")

    def __call__(self, state: Sequence[Any], x: Any) -> list[np.ndarray]:
        x = np.asarray(x)
        self.check_input(x.shape, x.dtype)
        return self._run(state, [cast(x, self.input_dtype, "x")], "the forward pass")


class Evaluate(_Program):
    """The stored objective without an update, in test mode; ``evaluate(state, data)`` is
    ``(loss, stats)`` of ``obj_fn(model, ps, testmode(st), data)`` on all of ``data`` at once
    (the data arrays already checked against the step's, any number of samples)."""

    def __init__(self, exported: jax_export.Exported, manifest: Manifest, signed: bool,
                 native_check: NativeCallCheck | None = None):
        spec = manifest.evaluate
        assert spec is not None  # load_evaluate loads it only then
        super().__init__(exported, spec, signed, native_check)
        _check_signature(exported, manifest, spec, EVALUATE_FILE)

    def __call__(self, state: Sequence[Any], data: list[np.ndarray], *,
                 time_limit: float | None = None,
                 stop: Callable[[], bool] | None = None) -> tuple[float, list[float]]:
        """``time_limit`` and ``stop`` as for :meth:`LoadedStep.run`: past the time limit,
        or :data:`~luxc.runtime.trust._guarded_call.GRACE_SECONDS` after ``stop()`` turned true, an
        evaluation that has not finished raises."""
        outs = self._run(state, data, "the evaluation", deadline_after(time_limit), stop)
        return float(outs[0]), [float(np.mean(s)) for s in outs[1:]]


def _check_signature(exported: jax_export.Exported, manifest: Manifest, spec: ProgramSpec,
                     file: str) -> None:
    n_state, n_p, n_s = manifest.layout.n_state, spec.n_parameters, spec.n_states
    states = manifest.state_inputs
    expected = [*states[:n_p], *states[n_state - n_s:]]
    inputs, avals = spec.inputs, exported.in_avals
    problem = None
    if len(avals) != len(expected) + len(inputs) or len(exported.out_avals) != spec.n_outputs:
        problem = (f"{file} takes {len(avals)} arrays and returns {len(exported.out_avals)}; the "
                   f"manifest says {len(expected) + len(inputs)} and {spec.n_outputs}")
    else:
        for s, aval in zip(expected, avals):
            if (s.shape, s.dtype) != (tuple(int(d) for d in aval.shape), str(aval.dtype)):
                problem = f"{file}'s parameters are not the artifact's state arrays"
        for s, x in zip(inputs, avals[len(expected):]):
            if tuple(x.shape[1:]) != s.shape or str(x.dtype) != s.dtype or \
                    isinstance(x.shape[0], int):
                problem = f"{file}'s inputs are not the manifest's (with a symbolic batch axis)"
    if problem:
        raise ArtifactError(f"{problem}: the manifest and the module disagree (recompile the "
                            "artifact)")


def _load(kind: type[_Program], files: dict[str, bytes], manifest: Manifest,
          directory: Path, file: str, signed: bool, allow_device_kernels: bool,
          allow_unchecked_native_calls: bool, checked: Mapping[str, set[str]] | None) -> _Program:
    native_check = None
    if not signed:
        targets = (checked[file] if checked is not None and file in checked else
                   check_untrusted(files[file], f"{directory} ({file})", mesh=manifest.mesh,
                                   directory=directory, allow_device_kernels=allow_device_kernels))
        native_check = NativeCallCheck.for_module(targets, f"{directory} ({file})",
                                                  allow_unchecked_native_calls,
                                                  allow_device_kernels)
    try:
        exported = jax_export.deserialize(bytearray(files[file]))
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot read this module"
        raise ArtifactError(f"cannot read {directory / file}: {e}") from None
    program = kind(exported, manifest, signed, native_check)
    data = manifest.data_inputs
    batch = data[0].shape[0] if data and data[0].shape else 1
    program.check_native_calls(batch)
    return program


def load_evaluate(files: dict[str, bytes], manifest: Manifest, directory: Path,
                  signed: bool, allow_device_kernels: bool = False,
                  allow_unchecked_native_calls: bool = False, *,
                  checked: Mapping[str, set[str]] | None = None) -> Evaluate | None:
    """The artifact's evaluation program (``None`` when it has none), checked like the step
    (``checked``: the custom-call targets a check of the whole artifact found, by file)."""
    if EVALUATE_FILE not in files:
        return None
    return _load(Evaluate, files, manifest, directory, EVALUATE_FILE, signed,
                 allow_device_kernels, allow_unchecked_native_calls, checked)


def load_forward(files: dict[str, bytes], manifest: Manifest, directory: Path,
                 signed: bool, allow_device_kernels: bool = False,
                 allow_unchecked_native_calls: bool = False, *,
                 checked: Mapping[str, set[str]] | None = None) -> Forward | None:
    """The artifact's forward pass (``None`` when it has none), its module checked first when
    this user did not sign the artifact (unless ``checked`` has its file's custom-call targets
    from a check of the whole artifact)."""
    if FORWARD_FILE not in files:
        return None
    return _load(Forward, files, manifest, directory, FORWARD_FILE, signed,
                 allow_device_kernels, allow_unchecked_native_calls, checked)


def read_input(path: str | Path, forward: Forward, what: str | None = None) -> NpyRows:
    """The ``.npy`` at ``path`` as rows read on demand, its header checked against what the
    model takes and against the file's size before any data is read; never unpickled. A FIFO,
    a device or a directory is refused at once (the open never blocks). Errors name the input
    ``what`` (default ``x (path)``)."""
    what = what or f"x ({shown(path)})"
    rows = open_npy(path, what, follow_symlinks=True)  # the user named this file
    forward.check_input(rows.shape, rows.dtype, what)
    return rows


def default_batch_size(forward: Forward) -> int:
    """About 64 MiB of input and output a batch (``--batch-size``'s default), 1 to 65536
    samples."""
    per_sample = forward.input_dtype.itemsize * math.prod(forward.input_shape)
    for aval in forward.exported.out_avals:
        if all(isinstance(d, int) for d in aval.shape[1:]):
            per_sample += np.dtype(aval.dtype).itemsize * math.prod(aval.shape[1:])
    return max(1, min(1 << 16, (64 << 20) // max(per_sample, 1)))


def predict_batches(forward: Forward, state: Sequence[Any], rows: NpyRows,
                    batch_size: int) -> Iterator[np.ndarray]:
    """The model's first output on ``rows`` (``(N, *input_shape)``), ``batch_size`` samples at a
    time: memory holds one batch. Each output keeps the batch axis (checked)."""
    for start in range(0, len(rows), batch_size):
        x = cast(rows.slice(start, min(start + batch_size, len(rows))), forward.input_dtype,
                 rows.what)
        y = forward(state, x)[0]
        if np.ndim(y) == 0 or y.shape[0] != len(x):
            raise ArtifactError(f"the model's output for {len(x)} samples has shape "
                                f"{list(np.shape(y))}, not one row a sample; predict it in "
                                "Python (luxc.load(DIR).predict(x))")
        yield y
