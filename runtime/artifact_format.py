"""The artefact directory format, and reading one as data: every byte luxc uses is read once,
bounded, checked against the manifest, and the manifest itself against a schema.

=====================  =======================================================================
``manifest.json``      format version, versions of luxc/jax/jaxlib, platforms, the flat input and
                       output layout, pass report, compile options, XLA's figures, and the size
                       and SHA-256 of every other file
``manifest.sig``       HMAC-SHA256 of ``manifest.json`` under the key of the user who compiled it
                       (:mod:`luxc.runtime.trust`); absent when that user had no usable key
``step.jaxexport``     the optimised StableHLO as a jax.export artefact (portable, versioned)
``step.mlir``          the same module as text, for reading
``executable.bin``     the XLA executable for the host platform (only when it is a target)
``state.safetensors``  the initial state: parameters, optimiser state and model state leaves
``data.safetensors``   the example data
=====================  =======================================================================

The set of file names is fixed here, not taken from the manifest: a manifest can neither point
luxc at another path (``../x``, ``/etc/passwd``) nor make it skip a file it uses. Symbolic links
and non-regular files are refused; no file is read past the size the manifest gives it. Since
the manifest holds every other file's hash, the signature over the manifest authenticates them
all; only the executable needs it (everything else is data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from luxc.runtime.bounded_read import parse_json, read_regular, sha256
from luxc.runtime.errors import ArtifactError
from luxc.runtime.temporary_names import TEMPORARY
from luxc.runtime.trust import key_problem, verify

FORMAT = "luxc-artifact"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNATURE_DOMAIN = "luxc-artifact-manifest-v2"
REQUIRED_FILES = ("step.jaxexport", "step.mlir", "state.safetensors", "data.safetensors")
OPTIONAL_FILES = ("executable.bin",)
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
    layout = manifest["layout"]
    if layout["n_state"] + layout["n_data"] != len(manifest["inputs"]) or min(
            layout["n_state"], layout["n_data"]) < 0:
        raise ArtifactError("manifest layout counts do not match its inputs")
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
    if ("executable.bin" in files) != (manifest["executable_key"] is not None):
        raise ArtifactError("manifest lists an executable without its key, or a key without it")
    return manifest


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
    if not directory.is_dir():
        raise ArtifactError(f"artefact directory not found: {directory}")
    raw = read_regular(directory / MANIFEST, "artefact manifest", MAX_MANIFEST_BYTES)
    try:
        manifest = check_manifest(parse_json(raw, f"artefact manifest {directory / MANIFEST}"))
    except ArtifactError as e:
        raise ArtifactError(f"{directory}: {e}") from None
    files = {}
    for name, entry in manifest["files"].items():
        data = read_regular(directory / name, "artefact file", entry["size"])
        if len(data) != entry["size"] or sha256(data) != entry["sha256"]:
            raise ArtifactError(f"checksum mismatch for {directory / name}: the artefact was "
                                "modified or corrupted; recompile it with `luxc compile`")
        files[name] = data
    signed, reason = _signature(directory, raw)
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
