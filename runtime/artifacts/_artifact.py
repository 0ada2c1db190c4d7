"""Exported training steps on disk: what ``luxc compile`` writes and ``luxc run`` loads.

The step is stored with a flat signature, ``step(*state, *data) -> (*state, loss, *stats)``, so
no Python class (model, optax state) is needed to load and run it. The directory format, and how
it is read and verified, is :mod:`luxc.runtime.artifacts._format`.

Trust: the StableHLO and the tensors are data, loaded from anyone's artifact. The serialized
executable is native code: it is loaded only when this user's luxc signed the manifest (and the
platform, jaxlib and compile options match); otherwise the portable StableHLO is compiled and
``notes`` says why. Nothing here unpickles anything: the executable is XLA's own serialization,
handed to jax's compilation-cache loader.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib
import numpy as np
from jax import export as jax_export

from luxc.passes import PassRecord, dot_bf16_batched
from luxc.runtime.artifacts._format import (
    ARTIFACT_FILES,
    EVALUATE_FILE,
    FORMAT,
    FORMAT_VERSION,
    FORWARD_FILE,
    MANIFEST,
    SIGNATURE,
    SIGNATURE_DOMAIN,
    Artifact,
    check_against_module,
    check_manifest,
    holds_only_luxc_files,
    read_artifact,
)
from luxc.runtime.artifacts._forward import load_evaluate, load_forward
from luxc.runtime.artifacts._loaded_step import LoadedStep, Predictor, artifact_tensors
from luxc.runtime.artifacts._manifest import Manifest
from luxc.runtime.artifacts._mesh import (
    describe_inputs,
    input_shardings,
    mesh_of,
    needed_devices,
)
from luxc.runtime.artifacts._tensor_codec import tensor_bytes
from luxc.runtime.caching import persistent_cache
from luxc.runtime.caching.persistent_cache import MemoryCache
from luxc.runtime.compiling._executable import (
    compile_exported,
    export,
    module_text,
    optimise,
    settle,
)
from luxc.runtime.compiling._options import CompileOptions
from luxc.runtime.compiling._stages import cost_figures, memory_figures
from luxc.runtime.compiling._unclaimed_dots import batched_bf16_dots
from luxc.runtime.files._atomic_write import check_writable_directory, write_atomic
from luxc.runtime.files._bounded_read import json_bytes, parse_json, read_regular, sha256
from luxc.runtime.files._directory_swap import replace_directory
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.files._temporary_names import remove_stale_temporaries, temporary_name
from luxc.runtime.messages._shown import shown
from luxc.runtime.performance._hlo_flops import step_flops
from luxc.runtime.trust._module_check import check_artifact_modules
from luxc.runtime.trust._native_calls import NativeCallCheck
from luxc.runtime.trust._untrusted_options import untrusted_xla_options
from luxc.runtime.trust._user_key import KeyUnavailable, sign


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"luxc": version("luxc"), "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def is_artifact_directory(path: Path) -> bool:
    """Whether ``path`` is a real directory holding a luxc manifest (any format version) and
    nothing but the files luxc writes into an artifact: the only kind luxc may delete."""
    if path.is_symlink() or not path.is_dir() or not holds_only_luxc_files(path):
        return False
    try:
        manifest = parse_json(read_regular(path / MANIFEST, "manifest", 64 << 20), "manifest")
    except ArtifactError:
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_output(out: str | Path, force: bool) -> None:
    """Refuse, before any work, an ``--out`` luxc must not write: an existing path without
    ``force``; with it, anything but a directory holding only a luxc artifact (luxc never
    deletes what it did not make); a place it cannot write."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise ArtifactError(f"out={str(out)!r} names no new directory; give the artifact a "
                            "directory name, e.g. out='step.luxc'")
    if out.exists() or out.is_symlink():
        if not force:
            raise ArtifactError(f"{out} already exists; choose another out, or pass force=True to "
                                "replace the artifact there")
        if not is_artifact_directory(out):
            extra = [] if not out.is_dir() or out.is_symlink() else sorted(
                p.name for p in out.iterdir() if p.name not in ARTIFACT_FILES)
            raise ArtifactError(
                f"{out} is not a luxc artifact" + (f" (it also holds {', '.join(extra[:5])})"
                                                   if extra else "")
                + "; luxc replaces only directories it wrote, so choose another out")
    check_writable_directory(out.parent, "out's parent directory")


def save(out: str | Path, step: Callable, state: Sequence[Any], data: Sequence[Any], *,
         layout: dict[str, Any], platforms: Sequence[str], options: CompileOptions,
         force: bool = False, forward: tuple[Callable, Sequence[Any], dict] | None = None,
         evaluate: tuple[Callable, Sequence[Any], dict] | None = None,
         autotune: dict[str, Any] | None = None) -> Manifest:
    """Export, optimise and (for the host) compile ``step(*state, *data)``; write the artifact
    directory ``out`` atomically. Returns the :class:`Manifest` written, parsed from its bytes.

    ``forward`` is ``(fn, args, entry)``: the model's forward pass (:mod:`luxc.runtime.artifacts._forward`),
    its abstract arguments (the batch axis symbolic) and the manifest entry describing it;
    ``evaluate`` likewise, the objective without an update; ``autotune`` (when the options
    were autotuned) the candidates and their times, recorded as the manifest's ``"autotune"``."""
    out = Path(out)
    check_output(out, force)
    host = jax.default_backend()
    args = [*state, *data]
    traced, optimized, records, trace_seconds = optimise(step, args, options, platforms)
    files: dict[str, bytes] = {}
    optimized, records, (compile_seconds, executable_key, figures) = _host_step(
        traced, optimized, records, args, options, files, host in platforms)
    files |= {
        "step.jaxexport": bytes(optimized.serialize()),
        "step.mlir": module_text(optimized.mlir_module_serialized).encode(),
        "state.safetensors": tensor_bytes(state),
        "data.safetensors": tensor_bytes(data),
    }
    programs = {key: _export_program(program, files, file, what, platforms, options)
                for key, program, file, what in (
                    ("forward", forward, FORWARD_FILE, "the model's forward pass"),
                    ("evaluate", evaluate, EVALUATE_FILE, "the objective without an update"))}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "platforms": list(platforms),
        "executable_platform": host if "executable.bin" in files else None,
        "executable_key": executable_key,
        "layout": layout,
        "inputs": [{"name": name, **spec} for name, spec in
                   zip([*layout["state_names"], *layout["data_names"]], describe_inputs(args))],
        "mesh": mesh_of(args),
        "outputs": [{"name": name, "shape": list(a.shape), "dtype": str(a.dtype)}
                    for name, a in zip(_output_names(layout), optimized.out_avals)],
        "pass_report": [r.to_json() for r in records],
        "compile_options": {"passes": options.passes, "xla_options": dict(options.xla_options),
                            "precision": options.precision,
                            "mixed_precision": options.mixed_precision},
        "trace_seconds": trace_seconds,
        "compile_seconds": compile_seconds,
        **figures,
        **({"autotune": autotune} if autotune else {}),
        **{key: entry for key, entry in programs.items() if entry},
        "files": {name: {"sha256": sha256(content), "size": len(content)}
                  for name, content in files.items()},
    }
    written = json_bytes(manifest)
    _write_directory(out, files, written)
    return check_manifest(json.loads(written))


def _host_step(traced: jax_export.Exported, optimized: jax_export.Exported,
               records: list[PassRecord], args: Sequence[Any], options: CompileOptions,
               files: dict[str, bytes], for_host: bool
               ) -> tuple[jax_export.Exported, list[PassRecord], tuple]:
    """Compile the step for this machine when it is ``for_host`` (:func:`_host_executable`),
    again without ``dot_bf16_batched`` when XLA did not keep its dots (:func:`settle`); return
    the module to store, its pass records and the compile's figures."""
    if not for_host:
        return optimized, records, (None, None, {})
    *figures, compiled = _host_executable(optimized, args, options, files)
    again = settle(traced, records, compiled, options.dump_dir)
    if again is None:
        return optimized, records, tuple(figures)
    optimized, records = again
    files.pop("executable.bin", None)
    *figures, _ = _host_executable(optimized, args, options, files)
    return optimized, records, tuple(figures)


def _host_executable(optimized: jax_export.Exported, args: Sequence[Any],
                     options: CompileOptions, files: dict[str, bytes]
                     ) -> tuple[float, str | None, dict[str, Any], jax.stages.Compiled]:
    """Compile ``optimized`` for this machine; add its serialized executable to ``files`` (as
    ``executable.bin``); return the compile's seconds, the executable's cache key, XLA's
    figures and the executable."""
    captured = MemoryCache()  # catches what XLA compiled, in XLA's own serialization
    compiled, compile_seconds = compile_exported(
        optimized, args, xla_options=dict(options.xla_options), cache=captured)
    executable_key = None
    if len(captured.entries) == 1:
        executable_key, files["executable.bin"] = next(iter(captured.entries.items()))
    return compile_seconds, executable_key, _figures(compiled), compiled


def _export_program(program: tuple[Callable, Sequence[Any], dict] | None,
                    files: dict[str, bytes], file: str, what: str, platforms: Sequence[str],
                    options: CompileOptions) -> dict[str, Any] | None:
    if program is None:
        return None
    fn, args, entry = program
    try:
        exported = export(fn, args, platforms=platforms, precision=options.precision)
    except Exception as e:  # noqa: BLE001 - the step is still usable; say what is not
        warnings.warn(f"{what} could not be exported for any batch size "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the "
                      f"artifact trains, without {file} (`luxc predict`, `--eval-data`)",
                      stacklevel=4)
        return None
    files[file] = bytes(exported.serialize())
    return {**entry, "n_outputs": len(exported.out_avals)}


def _write_directory(out: Path, files: dict[str, bytes], manifest: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # What a killed `luxc compile --out` of the same name left.
    remove_stale_temporaries(out, holds_only_luxc_files)
    tmp = temporary_name(out, "partial")
    tmp.mkdir(mode=0o777)  # the umask applies, as for any directory the user makes
    try:
        for name, content in files.items():
            write_atomic(tmp / name, content)
        write_atomic(tmp / MANIFEST, manifest)  # after the files it lists
        try:
            write_atomic(tmp / SIGNATURE, sign(SIGNATURE_DOMAIN, manifest).encode() + b"\n")
        except KeyUnavailable as e:
            warnings.warn(f"the artifact is not signed ({e}): luxc will compile its StableHLO "
                          "instead of loading its executable", stacklevel=3)
        if out.exists() and not is_artifact_directory(out):  # changed since check_output
            raise ArtifactError(f"{out} is no longer a luxc artifact; nothing was replaced")
        old = replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if is_artifact_directory(old):
            shutil.rmtree(old, ignore_errors=True)
        else:  # swapped in by someone while luxc compiled: keep it, under a name to see
            kept = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            old.rename(kept)
            warnings.warn(f"{out} was replaced while luxc wrote it; what was there is now at "
                          f"{kept}", stacklevel=3)


def _output_names(layout: dict[str, Any]) -> list[str]:
    return [*layout["state_names"], "loss", *(f"stats[{i}]" for i in range(layout["n_stats"]))]


def _figures(compiled: jax.stages.Compiled) -> dict[str, Any]:
    cost = cost_figures(compiled) or {}
    counted = step_flops(compiled.as_text())  # each loop as often as it runs; XLA's counts once
    return {"flops": float(counted) if counted is not None else cost.get("flops"),
            "bytes_accessed": cost.get("bytes accessed"), "memory": memory_figures(compiled)}


def load(directory: str | Path, *, allow_device_kernels: bool = False,
         allow_unchecked_native_calls: bool = False) -> LoadedStep:
    """Load an artifact: read and verify every file once, then use its executable if this
    user's luxc signed it and this machine's platform and jaxlib match the ones that built it;
    else compile its portable StableHLO. Each fallback is a warning and a line in ``notes``.

    The StableHLO of an artifact this user did not sign is checked first in an isolated child
    process (:mod:`luxc.runtime.trust._module_check`); ``allow_device_kernels=True`` admits compiled
    GPU/TPU kernels (Mosaic, Pallas) in it, which are otherwise refused. Each of its modules
    is compiled only when every native kernel it calls gets the buffer shapes jax's own lowering
    gives it (:mod:`luxc.runtime.trust._native_calls`); ``allow_unchecked_native_calls=True`` (the user
    trusts its author) skips that check. The manifest's inputs and outputs must be the module's
    signature."""
    artifact = _read_for_host(directory)
    manifest, host = artifact.manifest, jax.default_backend()
    trust = (allow_device_kernels, allow_unchecked_native_calls)
    native_check, checked = None, None
    if not artifact.signed_by_this_user:  # its modules checked in one child process
        checked = check_artifact_modules(
            artifact.files, ("step.jaxexport", FORWARD_FILE, EVALUATE_FILE), artifact.directory,
            mesh=manifest.mesh, allow_device_kernels=allow_device_kernels)
        native_check = NativeCallCheck.for_module(
            checked["step.jaxexport"], f"{artifact.directory} (step.jaxexport)",
            allow_unchecked_native_calls, allow_device_kernels)
    try:
        exported = jax_export.deserialize(bytearray(artifact.files["step.jaxexport"]))
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot read this module"
        raise ArtifactError(f"cannot read the StableHLO of {artifact.directory} with jaxlib "
                            f"{jaxlib.__version__} (built with jaxlib "
                            f"{shown(manifest.versions['jaxlib'], 80)}): {e}") from None
    check_against_module(manifest, exported.in_avals, exported.out_avals)
    shardings = input_shardings(manifest.mesh, exported)
    args = [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype), sharding=sharding)
            for s, sharding in zip(manifest.inputs, shardings)]
    notes: list[str] = []
    cache = _stored_executable(artifact, host, notes)
    xla_options = untrusted_xla_options(dict(manifest.xla_options),
                               artifact.signed_by_this_user, notes)
    # Always a luxc cache scope: never one of jax's own, unauthenticated cache directories.
    compile_cache = cache or persistent_cache.active() or MemoryCache()
    compiled, _ = compile_exported(exported, args, xla_options=xla_options, cache=compile_cache,
                                   native_check=native_check)
    _check_batched_dots(compiled, host, manifest, artifact.directory)
    loaded_executable = cache is not None and cache.loaded
    if cache is not None and not loaded_executable:
        notes.append("the artifact's executable does not match this machine's XLA (devices or "
                     "options differ); compiled its StableHLO instead")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    source = "serialized executable" if loaded_executable else "compiled from StableHLO"
    forward = load_forward(artifact.files, manifest, artifact.directory,
                           artifact.signed_by_this_user, *trust, checked=checked)
    evaluate = load_evaluate(artifact.files, manifest, artifact.directory,
                             artifact.signed_by_this_user, *trust, checked=checked)
    return LoadedStep(artifact, exported, compiled, source, notes, shardings, forward, evaluate,
                      xla_options, native_check)


def _check_batched_dots(compiled: jax.stages.Compiled, host: str, manifest: Manifest,
                        directory: Path) -> None:
    """Refuse, before any step runs, a CPU step with batched bf16 dots XLA:CPU cannot run here
    (:mod:`luxc.runtime.compiling._unclaimed_dots`): the first step would fail in XLA. Read
    only for a step ``dot_bf16_batched`` rewrote (another fails at its first step, in XLA's
    words)."""
    if host != "cpu" or not any(r.name == dot_bf16_batched.NAME and r.rewrites
                                for r in manifest.pass_report):
        return
    _, unclaimed = batched_bf16_dots(compiled.as_text())
    if unclaimed:
        raise ArtifactError(
            f"{directory}: XLA:CPU here cannot run {len(unclaimed)} of the step's batched "
            f"bfloat16 dots ({', '.join(unclaimed[:3])}): it runs a bf16 x bf16 -> f32 batched "
            f"dot only inside YNNPACK, which did not take them; export the step again on this "
            f"machine (luxc.export_step), which compiles it without dot_bf16_batched")


def _stored_executable(artifact: Artifact, host: str, notes: list[str]) -> MemoryCache | None:
    """The artifact's executable as a cache to compile from, when it may and can be used here:
    signed by this user, built for ``host`` with this jaxlib; else ``None`` and why in
    ``notes``."""
    manifest = artifact.manifest
    if "executable.bin" not in artifact.files:
        notes.append(f"the artifact holds no executable for {host}; compiled its StableHLO")
    elif manifest.executable_platform != host or manifest.versions["jaxlib"] != \
            jaxlib.__version__:
        notes.append(f"the executable was built for {shown(manifest.executable_platform, 80)} "
                     f"with jaxlib {shown(manifest.versions['jaxlib'], 80)}; compiled the "
                     f"portable StableHLO for {host} with jaxlib {jaxlib.__version__} instead")
    elif not artifact.signed_by_this_user:
        notes.append(f"did not load the artifact's executable (native code) because "
                     f"{artifact.unsigned_reason}; compiled its StableHLO instead")
    else:
        return MemoryCache({manifest.executable_key: artifact.files["executable.bin"]})
    return None


def _read_for_host(directory: str | Path) -> Artifact:
    artifact = read_artifact(directory)
    manifest, host = artifact.manifest, jax.default_backend()
    if host not in manifest.platforms:
        raise ArtifactError(f"this artifact targets {shown(', '.join(manifest.platforms), 200)} but "
                            f"this machine runs {host}; recompile it with platforms=[{host!r}]")
    needed_devices(manifest.mesh)  # before reading the module: say what this machine lacks
    return artifact


def load_predictor(directory: str | Path, *, allow_device_kernels: bool = False,
                   allow_unchecked_native_calls: bool = False) -> Predictor:
    """The artifact's forward pass with its initial state, without loading (or compiling) its
    training step: what ``luxc predict`` runs. Same trust rules as :func:`load`."""
    artifact = _read_for_host(directory)
    forward = load_forward(artifact.files, artifact.manifest, artifact.directory,
                           artifact.signed_by_this_user, allow_device_kernels,
                           allow_unchecked_native_calls)
    if forward is None:
        raise ArtifactError(f"{artifact.directory} holds no forward pass (its model could not be "
                            "exported for any batch size when it was compiled, or an older luxc "
                            "compiled it); recompile it with this luxc")
    state = artifact_tensors(artifact, "state.safetensors", artifact.manifest.state_inputs)
    return Predictor(artifact.directory, artifact.manifest, forward, state)
