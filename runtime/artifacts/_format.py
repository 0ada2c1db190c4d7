"""The artifact directory format, and reading one as data: every byte luxc uses is read once,
bounded, checked against the manifest, and the manifest itself against a schema.

=====================  =======================================================================
``manifest.json``      format version, versions of luxc/jax/jaxlib, platforms, the flat input and
                       output layout, pass report, compile options, XLA's figures, and the size
                       and SHA-256 of every other file
``manifest.sig``       HMAC-SHA256 of ``manifest.json`` under the key of the user who compiled it
                       (:mod:`luxc.runtime.trust._user_key`); absent when that user had no usable key
``step.jaxexport``     the optimised StableHLO as a jax.export artifact (portable, versioned)
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
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from luxc.runtime.artifacts._manifest import (
    FORMAT as FORMAT,
)
from luxc.runtime.artifacts._manifest import (
    FORMAT_VERSION as FORMAT_VERSION,
)
from luxc.runtime.artifacts._manifest import ArraySpec, Manifest, describe, parse_manifest
from luxc.runtime.files._bounded_read import parse_json, read_regular, sha256
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.files._temporary_names import TEMPORARY
from luxc.runtime.messages._shown import shown
from luxc.runtime.trust._user_key import key_problem, verify

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNATURE_DOMAIN = "luxc-artifact-manifest-v2"
REQUIRED_FILES = ("step.jaxexport", "step.mlir", "state.safetensors", "data.safetensors")
FORWARD_FILE = "forward.jaxexport"
EVALUATE_FILE = "evaluate.jaxexport"
OPTIONAL_FILES = ("executable.bin", FORWARD_FILE, EVALUATE_FILE)
ARTIFACT_FILES = (MANIFEST, SIGNATURE, *REQUIRED_FILES, *OPTIONAL_FILES)


def holds_only_luxc_files(directory: Path) -> bool:
    """Whether every entry of ``directory`` is a regular file luxc writes into an artifact: a
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


MAX_MANIFEST_BYTES = 64 << 20
# The module files' sizes are not implied by the manifest's shapes (the tensor files' are): a
# step's parameters are its arguments, so its module stays small; a larger one is refused.
MAX_MODULE_BYTES = 1 << 30
# A safetensors header: 8 bytes of length, then JSON of about 100 bytes a tensor (name, dtype,
# shape, offsets); this bound is several times what luxc writes.
_HEADER_BYTES, _HEADER_BYTES_PER_TENSOR = 4096, 512


def check_manifest(raw: Any) -> Manifest:
    """``raw`` (the JSON of ``manifest.json``) checked against the schema
    (:func:`~luxc.runtime.artifacts._manifest.parse_manifest`) and its file list against this
    format's files; one ``ArtifactError`` line naming the field otherwise."""
    manifest = parse_manifest(raw)
    _check_listed_files(manifest)
    return manifest


def _check_listed_files(manifest: Manifest) -> None:
    """Only files of the format; every required file; the forward and evaluate programs and
    the executable listed exactly when their manifest entries are."""
    for name in manifest.files:
        if name not in REQUIRED_FILES + OPTIONAL_FILES:
            raise ArtifactError(f"manifest lists {name!r}, which is not a file of the luxc "
                                f"artifact format ({', '.join(REQUIRED_FILES + OPTIONAL_FILES)})")
    missing = [name for name in REQUIRED_FILES if name not in manifest.files]
    if missing:
        raise ArtifactError(f"manifest does not list {missing[0]}, which every artifact has")
    for file, program in ((FORWARD_FILE, manifest.forward), (EVALUATE_FILE, manifest.evaluate)):
        if (file in manifest.files) != (program is not None):
            key = file.removesuffix(".jaxexport")
            raise ArtifactError(f"manifest lists {file} without its {key} entry, or the entry "
                                "without the file")
    if ("executable.bin" in manifest.files) != (manifest.executable_key is not None):
        raise ArtifactError("manifest lists an executable without its key, or a key without it")


def check_against_module(manifest: Manifest, in_avals: Any, out_avals: Any) -> None:
    """The manifest's inputs and outputs are the module's signature (``Exported.in_avals``,
    ``out_avals``); one ``ArtifactError`` line in the manifest's terms where they differ."""
    layout = manifest.layout
    outputs = [*layout.state_names, "loss", *(f"stats[{i}]" for i in range(layout.n_stats))]
    for kind, specs, avals, labels in (
            ("input", manifest.inputs, in_avals, [*layout.state_names, *layout.data_names]),
            ("output", manifest.outputs, out_avals, outputs)):
        if len(specs) != len(avals):
            raise ArtifactError(f"the manifest lists {len(specs)} {kind}s but step.jaxexport has "
                                f"{len(avals)}: the manifest and the module disagree (recompile "
                                "the artifact)")
        for label, spec, aval in zip(labels, specs, avals):
            module = ArraySpec(tuple(int(d) for d in aval.shape), str(aval.dtype))
            if (spec.shape, spec.dtype) != (module.shape, module.dtype):
                raise ArtifactError(f"the manifest says {kind} {shown(label, 200)} is "
                                    f"{describe(spec)}, but step.jaxexport's StableHLO has "
                                    f"{describe(module)}: the manifest and the module disagree "
                                    "(recompile the artifact)")


def size_bound(name: str, manifest: Manifest) -> int:
    """The largest size file ``name`` can have given the manifest's own shapes: the tensor
    files hold exactly the state and data arrays (plus a bounded header)."""
    specs = {"state.safetensors": manifest.state_inputs,
             "data.safetensors": manifest.data_inputs}.get(name)
    if specs is None:
        return MAX_MODULE_BYTES
    body = sum(int(np.prod(s.shape, dtype=object)) * np.dtype(s.dtype).itemsize for s in specs)
    return body + _HEADER_BYTES + _HEADER_BYTES_PER_TENSOR * len(specs)


def _checked_sizes(directory: Path, manifest: Manifest) -> None:
    for name, entry in manifest.files.items():
        bound = size_bound(name, manifest)
        if entry.size > bound:
            raise ArtifactError(f"{directory / name}: the manifest gives it {entry.size} bytes, "
                                f"more than the {bound} its shapes allow; luxc refuses it unread")


def other_entries(directory: Path) -> list[str]:
    """The names in ``directory`` that are not files of the artifact format (luxc never reads
    them), escaped for printing."""
    try:
        return sorted(shown(p.name, 200) for p in directory.iterdir()
                      if p.name not in ARTIFACT_FILES)
    except OSError:
        return []


def check_files(directory: str | Path, manifest: Manifest, *, hashes: bool) -> None:
    """Check the listed files without keeping them: each a regular file of the listed size
    within :func:`size_bound`; with ``hashes``, its SHA-256 too, read in 1 MiB chunks."""
    directory = Path(directory)
    _checked_sizes(directory, manifest)
    for name, entry in manifest.files.items():
        path = directory / name
        try:
            info = os.lstat(path)
        except OSError as e:
            raise ArtifactError(f"artifact file {path}: {e.strerror}") from None
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"artifact file {path} is not a regular file")
        if info.st_size != entry.size:
            raise ArtifactError(f"artifact file {path} has {info.st_size} bytes; the manifest "
                                f"lists {entry.size}: the artifact was modified or corrupted")
        if hashes and _streamed_sha256(path) != entry.sha256:
            raise ArtifactError(f"checksum mismatch for {path}: the artifact was modified or "
                                "corrupted; recompile it with `luxc compile`")


def _streamed_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> tuple[Manifest, bool, str | None]:
    """The :class:`Manifest` of the artifact in ``directory``, parsed once (no other file is
    read), whether this user's luxc signed it, and why not."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    raw = read_regular(directory / MANIFEST, "artifact manifest", MAX_MANIFEST_BYTES)
    try:
        manifest = check_manifest(parse_json(raw, f"artifact manifest {directory / MANIFEST}"))
    except ArtifactError as e:
        raise ArtifactError(f"{directory}: {e}") from None
    signed, reason = _signature(directory, raw)
    return manifest, signed, reason


@dataclass(frozen=True)
class Artifact:
    """An artifact as read from disk: the manifest, the verified bytes of every listed file,
    and whether this user's luxc signed it (why not, if not)."""

    directory: Path
    manifest: Manifest
    files: dict[str, bytes]
    signed_by_this_user: bool
    unsigned_reason: str | None


def read_artifact(directory: str | Path) -> Artifact:
    """Read and verify the artifact in ``directory`` (see the module docstring)."""
    directory = Path(directory)
    manifest, signed, reason = read_manifest(directory)
    _checked_sizes(directory, manifest)  # before any read: no file is read past its bound
    files = {}
    for name, entry in manifest.files.items():
        data = read_regular(directory / name, "artifact file", entry.size)
        if len(data) != entry.size or sha256(data) != entry.sha256:
            raise ArtifactError(f"checksum mismatch for {directory / name}: the artifact was "
                                "modified or corrupted; recompile it with `luxc compile`")
        files[name] = data
    return Artifact(directory, manifest, files, signed, reason)


def _signature(directory: Path, manifest_bytes: bytes) -> tuple[bool, str | None]:
    try:
        tag = read_regular(directory / SIGNATURE, "artifact signature", 256)
    except ArtifactError:
        return False, "it carries no signature"
    if verify(tag, SIGNATURE_DOMAIN, manifest_bytes):
        return True, None
    problem = key_problem()
    if problem:
        return False, problem
    return False, "its signature is not this user's (it was compiled by another user or machine)"
