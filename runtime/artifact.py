"""Exported training steps on disk: what ``luxc compile`` writes and ``luxc run`` loads.

An artefact directory holds

=====================  =======================================================================
``manifest.json``      format version, versions of luxc/jax/jaxlib, platforms, the flat input and
                       output layout, pass report, compile options, XLA's figures, and the
                       SHA-256 of every other file
``step.jaxexport``     the optimised StableHLO as a jax.export artefact (portable, versioned
                       VHLO: a newer jaxlib can load it and compile it)
``step.mlir``          the same module as text, for reading
``executable.bin``     the XLA executable for the host platform (only when it is a target)
``state.safetensors``  the initial state: parameters, optimiser state and model state leaves
``data.safetensors``   the example data
=====================  =======================================================================

The step is stored with a flat signature, ``step(*state, *data) -> (*state, loss, *stats)``, so
no Python class (model, optax state) is needed to load and run it.

Trust: a serialized executable is code. It is loaded only when every file's checksum matches
the manifest and the platform and jaxlib version match the ones that built it; otherwise the
portable StableHLO is compiled instead and ``notes`` says why.
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib
import numpy as np
from jax import export as jax_export
from jax.experimental import serialize_executable

from luxc.passes import resolve
from luxc.runtime.executable import compile_exported, export, module_text, rewrite
from luxc.runtime.files import (
    ArtifactError,
    describe,
    make_dir_public,
    read_json,
    read_tensors,
    sha256,
    tensor_bytes,
    write_atomic,
    write_json,
)
from luxc.runtime.options import CompileOptions

FORMAT = "luxc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"luxc": version("luxc"), "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _pipeline(options: CompileOptions, platforms: Sequence[str]) -> tuple[str, ...]:
    # One module serves every target: keep only the passes each target's pipeline has.
    per_platform = [resolve(options.passes, p) for p in platforms]
    return tuple(p for p in per_platform[0] if all(p in other for other in per_platform[1:]))


def save(out: str | Path, step: Callable, state: Sequence[Any], data: Sequence[Any], *,
         layout: dict[str, Any], platforms: Sequence[str], options: CompileOptions,
         force: bool = False) -> dict[str, Any]:
    """Export, optimise and (for the host) compile ``step(*state, *data)``; write the artefact
    directory ``out`` atomically. Returns the manifest."""
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; choose another --out or pass --force")
    host = jax.default_backend()
    args = [*state, *data]
    t0 = time.perf_counter()
    traced = export(step, args, platforms=list(platforms), precision=options.precision)
    optimized, records = rewrite(traced, _pipeline(options, platforms), options.dump_dir)
    trace_seconds = time.perf_counter() - t0
    files: dict[str, bytes] = {
        "step.jaxexport": bytes(optimized.serialize()),
        "step.mlir": module_text(optimized.mlir_module_serialized).encode(),
        "state.safetensors": tensor_bytes(state),
        "data.safetensors": tensor_bytes(data),
    }
    figures: dict[str, Any] = {}
    compile_seconds = None
    if host in platforms:
        compiled, compile_seconds = compile_exported(optimized, args,
                                                     xla_options=dict(options.xla_options))
        payload, _, _ = serialize_executable.serialize(compiled)
        files["executable.bin"] = payload
        figures = _figures(compiled)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "platforms": list(platforms),
        "executable_platform": host if "executable.bin" in files else None,
        "layout": layout,
        "inputs": [{"name": name, **spec} for name, spec in
                   zip([*layout["state_names"], *layout["data_names"]], describe(args))],
        "outputs": [{"name": name, "shape": list(a.shape), "dtype": str(a.dtype)}
                    for name, a in zip(_output_names(layout), optimized.out_avals)],
        "pass_report": [dataclasses.asdict(r) for r in records],
        "compile_options": {"passes": options.passes, "xla_options": dict(options.xla_options),
                            "precision": options.precision},
        "trace_seconds": trace_seconds,
        "compile_seconds": compile_seconds,
        **figures,
        "files": {name: None for name in files},
    }
    tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None,
                                prefix=f".{out.name}.", suffix=".partial"))
    try:
        for name, content in files.items():
            write_atomic(tmp / name, content)
            manifest["files"][name] = sha256(tmp / name)
        write_json(tmp / MANIFEST, manifest)  # last: a directory without it is never valid
        make_dir_public(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _output_names(layout: dict[str, Any]) -> list[str]:
    return [*layout["state_names"], "loss", *(f"stats[{i}]" for i in range(layout["n_stats"]))]


def _replace_dir(new: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)


def _figures(compiled: jax.stages.Compiled) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        figures["flops"] = float(cost.get("flops", 0.0)) if cost else None
        figures["bytes_accessed"] = float(cost.get("bytes accessed", 0.0)) if cost else None
    except Exception:  # noqa: BLE001 - optional figures
        figures["flops"] = None
    try:
        mem = compiled.memory_analysis()
        figures["memory"] = {k: int(getattr(mem, k)) for k in dir(mem)
                             if k.endswith("_in_bytes") and not k.startswith("_")}
    except Exception:  # noqa: BLE001
        figures["memory"] = None
    return figures


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an artefact directory, checked for format and version."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artefact directory not found: {directory}")
    manifest = read_json(directory / MANIFEST, "artefact manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{directory} is not a luxc artefact (manifest format is "
                            f"{manifest.get('format') if isinstance(manifest, dict) else '?'!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{directory} has artefact format version "
                            f"{manifest.get('format_version')}; this luxc reads version "
                            f"{FORMAT_VERSION}: recompile it with this luxc")
    return manifest


def verify(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Check every file against its SHA-256 in the manifest."""
    for name, digest in manifest["files"].items():
        path = Path(directory) / name
        if not path.is_file():
            raise ArtifactError(f"artefact file missing: {path}")
        if sha256(path) != digest:
            raise ArtifactError(f"checksum mismatch for {path}: the artefact was modified or "
                                "corrupted; recompile it with `luxc compile`")


class LoadedStep:
    """An exported training step loaded from disk, runnable without the model's source.

    ``state`` (parameters, optimiser state and model state, flat) and ``data`` come from the
    artefact; ``step(state, data)`` returns ``(new_state, loss, stats)``; ``run(n)`` trains
    ``n`` steps. ``notes`` records how it was loaded (e.g. a fallback compile).
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], call: Callable,
                 exported: jax_export.Exported, compiled: jax.stages.Compiled | None,
                 notes: list[str]):
        self.directory, self.manifest, self.exported = directory, manifest, exported
        self.compiled, self.notes, self._call = compiled, notes, call
        self.layout = manifest["layout"]
        arrays, _ = read_tensors(directory / "state.safetensors", "artefact state")
        self.state = [jax.numpy.asarray(a) for a in arrays]
        data, _ = read_tensors(directory / "data.safetensors", "artefact data")
        self.data = [jax.numpy.asarray(a) for a in data]
        self.step_count = int(self.layout.get("step", 0))

    @property
    def pass_report(self) -> list[dict[str, Any]]:
        return self.manifest["pass_report"]

    def as_text(self, stage: str = "optimized") -> str:
        if stage == "optimized":
            return (self.directory / "step.mlir").read_text()
        if stage == "hlo" and self.compiled is not None:
            return self.compiled.as_text()
        raise ValueError(f"a loaded artefact has the 'optimized' stage (and 'hlo' once compiled); "
                         f"received {stage!r}")

    def cost_analysis(self) -> dict[str, float] | None:
        flops = self.manifest.get("flops")
        return None if flops is None else {"flops": flops,
                                           "bytes accessed": self.manifest.get("bytes_accessed")}

    def memory_stats(self) -> dict[str, int] | None:
        return self.manifest.get("memory")

    def check_data(self, data: Sequence[Any]) -> list[jax.Array]:
        expected = self.manifest["inputs"][len(self.state):]
        if len(data) != len(expected):
            raise ArtifactError(f"the step takes {len(expected)} data arrays; received {len(data)}")
        out = []
        for i, (x, spec) in enumerate(zip(data, expected)):
            if list(np.shape(x)) != spec["shape"] or str(np.asarray(x).dtype) != spec["dtype"]:
                raise ArtifactError(f"data array {i} has shape {list(np.shape(x))} and dtype "
                                    f"{np.asarray(x).dtype}; the step was compiled for shape "
                                    f"{spec['shape']} and dtype {spec['dtype']}")
            out.append(jax.numpy.asarray(x))
        return out

    def __call__(self, state: Sequence[Any], data: Sequence[Any]):
        outs = self._call(*state, *data)
        n = len(self.state)
        return list(outs[:n]), outs[n], list(outs[n + 1:])

    def run(self, steps: int, data: Sequence[Any] | None = None,
            on_step: Callable[[int, float], None] | None = None) -> list[float]:
        """Train ``steps`` steps from the current state; returns the losses."""
        data = self.data if data is None else self.check_data(data)
        losses = []
        for _ in range(steps):
            self.state, loss, _ = self(self.state, data)
            self.step_count += 1
            losses.append(float(loss))
            if on_step is not None:
                on_step(self.step_count, losses[-1])
        return losses

    def save_state(self, path: str | Path) -> None:
        """Write the current state (and step) to a safetensors file, atomically."""
        write_atomic(path, tensor_bytes(self.state, {"step": str(self.step_count),
                                                     "format": "luxc-flat-state"}))


def load(directory: str | Path) -> LoadedStep:
    """Load an artefact: verify checksums, then use its executable if this machine's platform
    and jaxlib match the ones that built it, else compile its portable StableHLO."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify(directory, manifest)
    host = jax.default_backend()
    if host not in manifest["platforms"]:
        raise ArtifactError(f"this artefact targets {', '.join(manifest['platforms'])} but this "
                            f"machine runs {host}; recompile it with --platform {host}")
    try:
        exported = jax_export.deserialize(bytearray((directory / "step.jaxexport").read_bytes()))
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot read this module"
        raise ArtifactError(f"cannot read the StableHLO of {directory} with jaxlib "
                            f"{jaxlib.__version__} (built with jaxlib "
                            f"{manifest['versions']['jaxlib']}): {e}") from None
    args = [jax.ShapeDtypeStruct(tuple(s["shape"]), np.dtype(s["dtype"]))
            for s in manifest["inputs"]]
    notes = []
    same = (manifest.get("executable_platform") == host
            and manifest["versions"]["jaxlib"] == jaxlib.__version__)
    compiled = None
    if same and "executable.bin" in manifest["files"]:
        in_tree = jax.tree.structure((tuple(args), {}))
        out_tree = jax.tree.structure(tuple(exported.out_avals))
        try:
            compiled = serialize_executable.deserialize_and_load(
                (directory / "executable.bin").read_bytes(), in_tree, out_tree)
        except Exception as e:  # noqa: BLE001
            notes.append(f"the serialized executable did not load ({e}); compiled the StableHLO")
    elif "executable.bin" in manifest["files"]:
        notes.append(f"the executable was built for {manifest['executable_platform']} with jaxlib "
                     f"{manifest['versions']['jaxlib']}; compiled the portable StableHLO for "
                     f"{host} with jaxlib {jaxlib.__version__} instead")
    else:
        notes.append(f"the artefact holds no executable for {host}; compiled its StableHLO")
    if compiled is None:
        compiled, _ = compile_exported(exported, args,
                                       xla_options=manifest["compile_options"]["xla_options"])
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return LoadedStep(directory, manifest, compiled, exported, compiled, notes)
