"""The artefact directory format, and reading one as data: every byte luxc uses is read once,
bounded, checked against the manifest, and the manifest itself against a schema.

=====================  =======================================================================
``manifest.json``      format version, versions of luxc/jax/jaxlib, platforms, the flat input and
                       output layout, pass report, compile options, XLA's figures, and the size
                       and SHA-256 of every other file
``manifest.sig``       HMAC-SHA256 of ``manifest.json`` under the key of the user who compiled it
                       (:mod:`luxc.runtime.trust._user_key`); absent when that user had no usable key
``step.jaxexport``     the optimised StableHLO as a jax.export artefact (portable, versioned)
``step.mlir``          the same module as text, for reading
``executable.bin``     the XLA executable for the host platform (only when it is a target)
``state.safetensors``  the initial state: parameters, optimiser state and model state leaves
``data.safetensors``   the example data
``forward.jaxexport``  the model's forward pass in test mode, any batch size
                       (:mod:`luxc.runtime.artifacts._forward`; absent when it could not be exported)
``evaluate.jaxexport`` the objective without an update, test mode, any number of samples
=====================  =======================================================================

The set of file names is fixed here, not taken from the manifest: a manifest can neither point
luxc at another path (``../x``, ``/etc/passwd``) nor make it skip a file it uses. Symbolic links
and non-regular files are refused; no file is read past the size the manifest gives it. Since
the manifest holds every other file's hash, the signature over the manifest authenticates them
all; only the executable needs it (everything else is data).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from luxc.runtime.files._bounded_read import parse_json, read_regular, sha256
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.files._temporary_names import TEMPORARY
from luxc.runtime.messages._shown import shown
from luxc.runtime.trust._user_key import key_problem, verify

FORMAT = "luxc-artifact"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNATURE_DOMAIN = "luxc-artifact-manifest-v2"
REQUIRED_FILES = ("step.jaxexport", "step.mlir", "state.safetensors", "data.safetensors")
FORWARD_FILE = "forward.jaxexport"
EVALUATE_FILE = "evaluate.jaxexport"
OPTIONAL_FILES = ("executable.bin", FORWARD_FILE, EVALUATE_FILE)
ARTIFACT_FILES = (MANIFEST, SIGNATURE, *REQUIRED_FILES, *OPTIONAL_FILES)


def holds_only_luxc_files(directory: Path) -> bool:
    """Whether every entry of ``directory`` is a regular file luxc writes into an artefact: a
    file of the format or a temporary of one being written. A stale directory is removed only
    if this holds."""
    def luxc_name(name: str) -> bool:
        temporary = TEMPORARY.fullmatch(name)
        return name in ARTIFACT_FILES or temporary is not None and temporary["kind"] == "tmp"

    try:
        return all(luxc_name(p.name) and not p.is_symlink() and p.is_file()
                   for p in directory.iterdir())
    except OSError:
        return False
_MAX_DIMENSION = 1 << 40
MAX_MANIFEST_BYTES = 64 << 20
# The module files' sizes are not implied by the manifest's shapes (the tensor files' are): a
# step's parameters are its arguments, so its module stays small; a larger one is refused.
MAX_MODULE_BYTES = 1 << 30
# A safetensors header: 8 bytes of length, then JSON of about 100 bytes a tensor (name, dtype,
# shape, offsets); this bound is several times what luxc writes.
_HEADER_BYTES, _HEADER_BYTES_PER_TENSOR = 4096, 512

_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
_ARRAY = {"shape": [int], "dtype": str}
# A schema is a type (or tuple of types), a dict of field schemas, or a one-item list of the
# schema of every item. Fields not listed are allowed (newer luxc may add some).
_SCHEMA: dict[str, Any] = {
    "format": str,
    "format_version": int,
    "created": str,
    "versions": {"luxc": str, "jax": str, "jaxlib": str},
    "platforms": [str],
    "executable_platform": (str, type(None)),
    "executable_key": (str, type(None)),
    "layout": {"n_state": int, "n_data": int, "state_names": [str], "data_names": [str],
               "n_stats": int, "step": int, "model": str},
    "inputs": [_ARRAY],
    "outputs": [{"name": str, **_ARRAY}],
    "pass_report": [{"name": str, "rewrites": int, "ops_before": int, "ops_after": int}],
    "compile_options": {"passes": (str, list), "xla_options": dict, "precision": str},
    "trace_seconds": _NUMBER,
    "compile_seconds": _OPTIONAL_NUMBER,
    "files": dict,
}
# Optional fields: checked when present.
_OPTIONAL = {"flops": _OPTIONAL_NUMBER, "bytes_accessed": _OPTIONAL_NUMBER,
             "memory": (dict, type(None))}
_HEX64 = re.compile(r"[0-9a-f]{64}")
# The keys of a `luxc run --log` row besides the stats' own.
LOG_KEYS = ("step", "loss", "eval")
_ARRAY_DTYPES = {str(np.dtype(t)) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128, ml_dtypes.bfloat16,
    ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)}


def _type_names(t: Any) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in types)


def _check(value: Any, schema: Any, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ArtifactError(f"manifest field {where or '(top)'} must be an object; found "
                                f"{type(value).__name__}")
        for key, sub in schema.items():
            field = f"{where}.{key}" if where else key
            if key not in value:
                raise ArtifactError(f"manifest field {field} is missing")
            _check(value[key], sub, field)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ArtifactError(f"manifest field {where} must be a list; found "
                                f"{type(value).__name__}")
        for i, item in enumerate(value):
            _check(item, schema[0], f"{where}[{i}]")
    else:
        bad_bool = isinstance(value, bool) and bool not in (schema if isinstance(schema, tuple)
                                                            else (schema,))
        if bad_bool or not isinstance(value, schema):
            raise ArtifactError(f"manifest field {where} must be {_type_names(schema)}; found "
                                f"{type(value).__name__}")


def check_manifest(manifest: Any) -> dict[str, Any]:
    """``manifest`` checked against the schema; one ``ArtifactError`` line naming the field."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"not a luxc artefact (manifest format is {found!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"artefact format version {manifest.get('format_version')!r}; this "
                            f"luxc reads version {FORMAT_VERSION}: recompile it with this luxc")
    _check(manifest, _SCHEMA, "")
    for key, schema in _OPTIONAL.items():
        if key in manifest:
            _check(manifest[key], schema, key)
    if any(type(v) not in (int, float) for v in (manifest.get("memory") or {}).values()):
        raise ArtifactError("manifest field memory must map names to numbers")
    for name, value in manifest["compile_options"]["xla_options"].items():
        if not isinstance(value, bool | int | float | str):
            raise ArtifactError(f"manifest XLA option {name} must be a bool, number or string")
    for i, spec in enumerate(manifest["inputs"] + manifest["outputs"]):
        if spec["dtype"] not in _ARRAY_DTYPES:
            raise ArtifactError(f"manifest input/output {i} has dtype {spec['dtype'][:40]!r}, "
                                "which is not an array dtype luxc writes")
        if any(not 0 <= d < _MAX_DIMENSION for d in spec["shape"]):
            raise ArtifactError(f"manifest input/output {i} has a dimension out of range")
    _check_layout(manifest)
    _check_program(manifest, "forward", {"input": _ARRAY})
    _check_program(manifest, "evaluate", {"inputs": [_ARRAY]})
    files = manifest["files"]
    for name, entry in files.items():
        if name not in REQUIRED_FILES + OPTIONAL_FILES:
            raise ArtifactError(f"manifest lists {name!r}, which is not a file of the luxc "
                                f"artefact format ({', '.join(REQUIRED_FILES + OPTIONAL_FILES)})")
        _check(entry, {"sha256": str, "size": int}, f"files[{name!r}]")
        if not _HEX64.fullmatch(entry["sha256"]) or entry["size"] < 0:
            raise ArtifactError(f"manifest entry for {name} is malformed")
    for name in REQUIRED_FILES:
        if name not in files:
            raise ArtifactError(f"manifest does not list {name}, which every artefact has")
    for file, key in ((FORWARD_FILE, "forward"), (EVALUATE_FILE, "evaluate")):
        if (file in files) != (key in manifest):
            raise ArtifactError(f"manifest lists {file} without its {key} entry, or the entry "
                                "without the file")
    if ("executable.bin" in files) != (manifest["executable_key"] is not None):
        raise ArtifactError("manifest lists an executable without its key, or a key without it")
    return manifest


def _check_layout(manifest: dict[str, Any]) -> None:
    layout, inputs, outputs = manifest["layout"], manifest["inputs"], manifest["outputs"]
    n_state, n_data, n_stats = layout["n_state"], layout["n_data"], layout["n_stats"]
    if n_state + n_data != len(inputs) or min(n_state, n_data, n_stats) < 0:
        raise ArtifactError("manifest layout counts do not match its inputs")
    if n_data == 0 or not layout["data_names"]:
        raise ArtifactError("manifest field layout.data_names is empty: the step takes no data, "
                            "but every luxc training step takes some; this artefact was not "
                            "written by luxc compile (recompile it)")
    if len(layout["state_names"]) != n_state or len(layout["data_names"]) != n_data:
        raise ArtifactError(f"manifest layout names {len(layout['state_names'])} state and "
                            f"{len(layout['data_names'])} data arrays but counts {n_state} and "
                            f"{n_data}")
    _check_stat_names(layout.get("stat_names"), n_stats)
    for key in ("model_summary", "objective", "optimizer"):  # optional text
        if key in layout and not isinstance(layout[key], str):
            raise ArtifactError(f"manifest field layout.{key} must be str; found "
                                f"{type(layout[key]).__name__}")
    if layout["step"] < 0:
        raise ArtifactError(f"manifest field layout.step is {layout['step']}; a step count is "
                            "never negative")
    loss = outputs[n_state] if len(outputs) > n_state else {"shape": None, "dtype": "none"}
    if loss["shape"] != []:
        raise ArtifactError(f"manifest: the step's output after the state, its loss, is "
                            f"{_array(loss)}, not a scalar: layout.n_state ({n_state}) does not "
                            "split the inputs into state and data where the step does (a state "
                            "array was moved into the data?)")
    if len(outputs) != n_state + 1 + n_stats:
        # More outputs than the layout says: a scalar state array (an adjustable learning
        # rate) moved into the data passes the loss check above and lands here.
        hint = " (a state array was moved into the data?)" if len(outputs) > n_state + 1 + \
            n_stats else ""
        raise ArtifactError(f"manifest field layout.n_stats is {n_stats}, but the step has "
                            f"{len(outputs) - n_state - 1} outputs after its {n_state} state "
                            f"arrays and the loss{hint}")
    for name, given, got in zip(layout["state_names"], inputs, outputs):
        if (given["shape"], given["dtype"]) != (got["shape"], got["dtype"]):
            raise ArtifactError(f"manifest: state array {shown(name, 200)} goes in as "
                                f"{_array(given)} but comes out as {_array(got)}; the state the "
                                "step returns must be the state it takes")


def _check_stat_names(names: Any, n_stats: int) -> None:
    """``layout.stat_names`` (optional): the keys of the stats in ``luxc run``'s log rows, so
    strings, one per stat, distinct, and none of the row's own keys."""
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ArtifactError(f"manifest field layout.stat_names must be a list of strings, one "
                            f"name per stat; found {shown(repr(names), 200)} (recompile the "
                            "artefact)")
    if len(names) != n_stats:
        raise ArtifactError(f"manifest field layout.stat_names names {len(names)} stats but "
                            f"layout.n_stats is {n_stats} (recompile the artefact)")
    clash = sorted({n for n in names if n in LOG_KEYS or names.count(n) > 1})
    if clash:
        raise ArtifactError(f"manifest field layout.stat_names holds {shown(', '.join(clash), 200)}"
                            f": a stat's name must be unique and not one of the log's own keys "
                            f"({', '.join(LOG_KEYS)}), or its value would replace theirs "
                            "(recompile the artefact)")


def _check_program(manifest: dict[str, Any], key: str, inputs: dict[str, Any]) -> None:
    if key not in manifest:
        return
    spec = manifest[key]
    _check(spec, {"n_parameters": int, "n_states": int, "n_outputs": int, **inputs}, key)
    n_state = manifest["layout"]["n_state"]
    if min(spec["n_parameters"], spec["n_states"], spec["n_outputs"]) < 0 or \
            spec["n_parameters"] + spec["n_states"] > n_state:
        raise ArtifactError(f"manifest field {key} counts {spec['n_parameters']} parameter and "
                            f"{spec['n_states']} state arrays, more than the {n_state} the state "
                            "holds")
    for x in spec.get("inputs", [spec.get("input")]):
        if x["dtype"] not in _ARRAY_DTYPES or any(not 0 <= d < _MAX_DIMENSION for d in x["shape"]):
            raise ArtifactError(f"manifest field {key} has an input that is not an array luxc "
                                "writes")


def _array(spec: dict[str, Any]) -> str:
    return f"{shown(spec['dtype'], 40)}{spec['shape']}"


def check_against_module(manifest: dict[str, Any], in_avals: Any, out_avals: Any) -> None:
    """The manifest's inputs and outputs are the module's signature (``Exported.in_avals``,
    ``out_avals``); one ``ArtifactError`` line in the manifest's terms where they differ."""
    layout = manifest["layout"]
    names = [*layout["state_names"], *layout["data_names"]]
    for kind, specs, avals, labels in (
            ("input", manifest["inputs"], in_avals, names),
            ("output", manifest["outputs"], out_avals,
             [*layout["state_names"], "loss", *(f"stats[{i}]" for i in range(layout["n_stats"]))])):
        if len(specs) != len(avals):
            raise ArtifactError(f"the manifest lists {len(specs)} {kind}s but step.jaxexport has "
                                f"{len(avals)}: the manifest and the module disagree (recompile "
                                "the artefact)")
        for label, spec, aval in zip(labels, specs, avals):
            module = {"shape": [int(d) for d in aval.shape], "dtype": str(aval.dtype)}
            if (spec["shape"], spec["dtype"]) != (module["shape"], module["dtype"]):
                raise ArtifactError(f"the manifest says {kind} {shown(label, 200)} is "
                                    f"{_array(spec)}, but step.jaxexport's StableHLO has "
                                    f"{_array(module)}: the manifest and the module disagree "
                                    "(recompile the artefact)")


def size_bound(name: str, manifest: dict[str, Any]) -> int:
    """The largest size file ``name`` can have given the manifest's own shapes: the tensor
    files hold exactly the state and data arrays (plus a bounded header)."""
    layout = manifest["layout"]
    specs = {"state.safetensors": manifest["inputs"][:layout["n_state"]],
             "data.safetensors": manifest["inputs"][layout["n_state"]:]}.get(name)
    if specs is None:
        return MAX_MODULE_BYTES
    body = sum(int(np.prod(s["shape"], dtype=object)) * np.dtype(s["dtype"]).itemsize
               for s in specs)
    return body + _HEADER_BYTES + _HEADER_BYTES_PER_TENSOR * len(specs)


def _checked_sizes(directory: Path, manifest: dict[str, Any]) -> None:
    for name, entry in manifest["files"].items():
        bound = size_bound(name, manifest)
        if entry["size"] > bound:
            raise ArtifactError(f"{directory / name}: the manifest gives it {entry['size']} bytes, "
                                f"more than the {bound} its shapes allow; luxc refuses it unread")


def other_entries(directory: Path) -> list[str]:
    """The names in ``directory`` that are not files of the artefact format (luxc never reads
    them), escaped for printing."""
    try:
        return sorted(shown(p.name, 200) for p in directory.iterdir()
                      if p.name not in ARTIFACT_FILES)
    except OSError:
        return []


def check_files(directory: str | Path, manifest: dict[str, Any], *, hashes: bool) -> None:
    """Check the listed files without keeping them: each a regular file of the listed size
    within :func:`size_bound`; with ``hashes``, its SHA-256 too, read in 1 MiB chunks."""
    directory = Path(directory)
    _checked_sizes(directory, manifest)
    for name, entry in manifest["files"].items():
        path = directory / name
        try:
            info = os.lstat(path)
        except OSError as e:
            raise ArtifactError(f"artefact file {path}: {e.strerror}") from None
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"artefact file {path} is not a regular file")
        if info.st_size != entry["size"]:
            raise ArtifactError(f"artefact file {path} has {info.st_size} bytes; the manifest "
                                f"lists {entry['size']}: the artefact was modified or corrupted")
        if hashes and _streamed_sha256(path) != entry["sha256"]:
            raise ArtifactError(f"checksum mismatch for {path}: the artefact was modified or "
                                "corrupted; recompile it with `luxc compile`")


def _streamed_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> tuple[dict[str, Any], bool, str | None]:
    """The checked manifest of the artefact in ``directory`` (no other file is read), whether
    this user's luxc signed it, and why not."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artefact directory not found: {directory}")
    raw = read_regular(directory / MANIFEST, "artefact manifest", MAX_MANIFEST_BYTES)
    try:
        manifest = check_manifest(parse_json(raw, f"artefact manifest {directory / MANIFEST}"))
    except ArtifactError as e:
        raise ArtifactError(f"{directory}: {e}") from None
    signed, reason = _signature(directory, raw)
    return manifest, signed, reason


@dataclass(frozen=True)
class Artifact:
    """An artefact as read from disk: the manifest, the verified bytes of every listed file,
    and whether this user's luxc signed it (why not, if not)."""

    directory: Path
    manifest: dict[str, Any]
    files: dict[str, bytes]
    signed_by_this_user: bool
    unsigned_reason: str | None


def read_artifact(directory: str | Path) -> Artifact:
    """Read and verify the artefact in ``directory`` (see the module docstring)."""
    directory = Path(directory)
    manifest, signed, reason = read_manifest(directory)
    _checked_sizes(directory, manifest)  # before any read: no file is read past its bound
    files = {}
    for name, entry in manifest["files"].items():
        data = read_regular(directory / name, "artefact file", entry["size"])
        if len(data) != entry["size"] or sha256(data) != entry["sha256"]:
            raise ArtifactError(f"checksum mismatch for {directory / name}: the artefact was "
                                "modified or corrupted; recompile it with `luxc compile`")
        files[name] = data
    return Artifact(directory, manifest, files, signed, reason)


def _signature(directory: Path, manifest_bytes: bytes) -> tuple[bool, str | None]:
    try:
        tag = read_regular(directory / SIGNATURE, "artefact signature", 256)
    except ArtifactError:
        return False, "it carries no signature"
    if verify(tag, SIGNATURE_DOMAIN, manifest_bytes):
        return True, None
    problem = key_problem()
    if problem:
        return False, problem
    return False, "its signature is not this user's (it was compiled by another user or machine)"
