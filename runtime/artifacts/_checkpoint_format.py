"""The checkpoint file: one format for every writer (``luxc.save_state``, ``luxc run
--save-state`` and ``--checkpoint``) and every reader (``luxc.load_state``, ``luxc run --state``,
``--resume``, ``luxc predict --state``).

One safetensors file. Its metadata holds a contents table: the step, every array leaf by its key
path (``parameters['layer_1']['weight']``) with dtype and shape, the *static* values of the state
(``luxc.Val``: part of the pytree's structure, not arrays, yet they change as a model trains: the
README's ``self.incr *= 10``), and what a ``luxc run`` needs to continue its data order exactly
(``run``: seed, the step its data order started at). One SHA-256 covers the table and every
tensor, so an edited step or a swapped leaf is caught. A checkpoint is data: reading one runs no
code from it (static values are stored as JSON scalars, or as their ``repr`` to compare).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from luxc.runtime.artifacts._manifest import Manifest
from luxc.runtime.artifacts._tensor_codec import tensor_bytes, tensors_from_bytes
from luxc.runtime.files._bounded_read import read_regular
from luxc.runtime.files._errors import ArtifactError

FORMAT = "luxc-checkpoint-3"
# Bytes beyond the tensors a checkpoint file may have: the safetensors header and the contents
# table, a few hundred bytes a leaf.
_HEADER_BYTES, _HEADER_BYTES_PER_LEAF = 1 << 20, 2048
# Leaves are stored grouped like a TrainState flattens them (dict keys in sorted order), so a
# flat artifact's state (parameters, optimizer_state, states) is reordered to the same file.
_PART_ORDER = ("optimizer_state", "parameters", "states")
_SCALARS = {"bool": bool, "int": int, "float": float, "str": str}
# The largest step a checkpoint may hold (and a run reach): a file name stays short.
MAX_STEP = 1 << 40
MAX_SEED = (1 << 64) - 1
_HEX32, _HEX64 = re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as read from disk: ``names[i]`` is ``arrays[i]``'s key path; ``statics``
    maps a static value's key path to ``{"type": ..., "value": ...}`` or ``{"repr": ...}``."""

    path: Path
    step: int
    names: list[str]
    arrays: list[np.ndarray]
    statics: dict[str, dict[str, Any]]
    run: dict[str, Any] | None


def static_entry(value: Any, shown: str) -> dict[str, Any]:
    """How a static value is stored: a JSON scalar with its Python type (restored exactly), or
    ``shown``, its printout (a function, a tuple: compared, never rebuilt)."""
    kind = type(value).__name__
    if kind in _SCALARS and type(value) is _SCALARS[kind]:
        return {"type": kind, "value": value}
    return {"repr": shown}


def static_value(entry: dict[str, Any]) -> Any:
    """The value of a stored ``{"type", "value"}`` entry (a ``{"repr"}`` one has none)."""
    return _SCALARS[entry["type"]](entry["value"])


def canonical_order(names: list[str]) -> list[int]:
    """Indices putting ``names`` (key paths) in the order a TrainState's leaves flatten in."""
    part = lambda n: next((i for i, p in enumerate(_PART_ORDER) if n.startswith(p)),  # noqa: E731
                          len(_PART_ORDER))
    return sorted(range(len(names)), key=lambda i: (part(names[i]), i))


def digest(description: bytes, arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256(description)
    for a in arrays:
        data = np.asarray(a, order="C").tobytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _dtype(x: Any) -> str:
    return str(np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype)


def describe(names: list[str], arrays: list[Any]) -> list[dict[str, Any]]:
    return [{"path": n, "dtype": _dtype(a), "shape": list(np.shape(a))}
            for n, a in zip(names, arrays)]


def checkpoint_bytes(names: list[str], arrays: list[np.ndarray], step: int,
                     statics: dict[str, dict[str, Any]], run: dict[str, Any] | None = None) -> bytes:
    """The bytes of a checkpoint file (host arrays, in TrainState order)."""
    contents: dict[str, Any] = {"step": int(step), "leaves": describe(names, arrays),
                                "statics": statics}
    if run is not None:
        contents["run"] = run
    description = json.dumps(contents, sort_keys=True)
    meta = {"format": FORMAT, "contents": description,
            "sha256": digest(description.encode(), arrays)}
    return tensor_bytes(arrays, meta)


def max_bytes(expected: list[dict[str, Any]]) -> int:
    """The largest file a checkpoint of these leaves (``describe``'s entries) can be."""
    return sum(int(np.prod(e["shape"], dtype=np.int64)) * np.dtype(e["dtype"]).itemsize
               for e in expected) + _HEADER_BYTES + _HEADER_BYTES_PER_LEAF * len(expected)


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a file luxc wrote as a checkpoint (any version): the only kind of
    existing file luxc replaces with one. Reads the safetensors header only."""
    meta = _header_metadata(path)
    found = "" if meta is None else str(meta.get("format", ""))
    return found.startswith("luxc-checkpoint") or found == "luxc-flat-state"


def run_in_header(path: str | Path) -> dict[str, Any] | None:
    """The run record (``luxc run``'s identity of the run that wrote it) of the checkpoint at
    ``path``, read from its header alone and NOT verified (the SHA-256 is checked when the file
    is read); ``None`` when it has none or is not a checkpoint of this format."""
    meta = _header_metadata(path)
    if meta is None or meta.get("format") != FORMAT:
        return None
    try:
        run = json.loads(meta.get("contents", "")).get("run")
    except (ValueError, AttributeError, RecursionError):
        return None
    return run if _valid_run(run) else None


def _header_metadata(path: str | Path) -> dict[str, Any] | None:
    """The safetensors ``__metadata__`` of the regular file at ``path`` (never following a
    link or blocking on a FIFO), or ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        size = os.read(fd, 8)
        n = struct.unpack("<Q", size)[0] if len(size) == 8 else 0
        if not 0 < n <= _HEADER_BYTES << 6:
            return None
        meta = json.loads(os.read(fd, n)).get("__metadata__") or {}
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path, limit: int) -> Checkpoint:
    """Read and verify the checkpoint at ``path`` (at most ``limit`` bytes)."""
    path = Path(path)
    arrays, meta = tensors_from_bytes(read_regular(path, "checkpoint", limit), f"checkpoint {path}")
    if meta.get("format") != FORMAT:
        if str(meta.get("format", "")).startswith("luxc-checkpoint") or \
                meta.get("format") == "luxc-flat-state":
            raise ArtifactError(f"{path} is a {meta['format']} file from an older luxc; this luxc "
                                f"reads {FORMAT}: save it again with this luxc")
        raise ArtifactError(f"{path} is not a luxc checkpoint (format {meta.get('format')!r})")
    description = meta.get("contents", "")
    if digest(description.encode(), arrays) != meta.get("sha256"):
        raise ArtifactError(f"checksum mismatch in checkpoint {path}: the file is corrupted or "
                            "was edited")
    try:
        contents = json.loads(description)
        step, leaves, statics = contents["step"], contents["leaves"], contents["statics"]
        run = contents.get("run")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ArtifactError(f"checkpoint {path} has no valid contents table") from None
    if not (isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= MAX_STEP):
        raise ArtifactError(f"checkpoint {path} has step {_short(step)}; a step is a whole "
                            f"number from 0 to 2**{MAX_STEP.bit_length() - 1}")
    if not isinstance(leaves, list) or len(leaves) != len(arrays):
        raise ArtifactError(f"checkpoint {path}: its contents table lists "
                            f"{len(leaves) if isinstance(leaves, list) else '?'} leaves for "
                            f"{len(arrays)} tensors")
    for entry, a in zip(leaves, arrays):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)) or entry != {
                "path": entry["path"], "dtype": str(a.dtype), "shape": list(a.shape)}:
            raise ArtifactError(f"checkpoint {path}: the contents table does not describe its "
                                f"tensors ({entry!r})")
    if not (isinstance(statics, dict) and all(_valid_static(e) for e in statics.values())):
        raise ArtifactError(f"checkpoint {path}: its static values are malformed")
    if run is not None and not (_valid_run(run) and run["origin"] <= step):
        raise ArtifactError(f"checkpoint {path}: its run record is malformed")
    names = [e["path"] for e in leaves]
    _check_loss_scaling(path, names, arrays)
    return Checkpoint(path, step, names, arrays, statics, run)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"


def _check_loss_scaling(path: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    """Refuse a float16 loss scale that cannot train: 0, negative, inf or nan (every step would
    be skipped, or every update be nan)."""
    for name, a in zip(names, arrays):
        if name == "loss_scaling.scale" and not (a.size == 1 and np.isfinite(a).all()
                                                  and float(a.reshape(())) > 0):
            raise ArtifactError(f"checkpoint {path}: its float16 loss scale is "
                                f"{np.asarray(a).reshape(-1)[:1]}; a loss scale is a finite "
                                "number > 0 (the file is damaged or was edited)")


def _valid_static(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    if set(entry) == {"repr"}:
        return isinstance(entry["repr"], str)
    return set(entry) == {"type", "value"} and entry["type"] in _SCALARS and \
        type(entry["value"]) is _SCALARS[entry["type"]]


def _valid_run(run: Any) -> bool:
    """``luxc run``'s record: seed and origin (the step its data order started at), and, from
    this format on, the run's identity: ``run_id`` (32 hex digits), ``artifact`` (the SHA-256
    naming the artifact it trains; ``artifact_dir``, where it was, to name it), ``started`` (ns
    since 1970) and ``log`` (the bytes of its ``--log`` up to this checkpoint, their SHA-256,
    and the file's device and inode)."""
    if not (isinstance(run, dict) and all(type(run.get(k)) is int and 0 <= run[k] <= bound
                                          for k, bound in (("origin", MAX_STEP),
                                                           ("seed", MAX_SEED)))):
        return False
    hexes = {"run_id": _HEX32, "artifact": _HEX64}
    if not all(isinstance(run.get(k, ""), str) and (k not in run or p.fullmatch(run[k]))
               for k, p in hexes.items()):
        return False
    if "started" in run and not (type(run["started"]) is int and run["started"] >= 0) or \
            not (isinstance(run.get("artifact_dir", ""), str) and len(run.get("artifact_dir", ""))
                 <= 4096):
        return False
    log = run.get("log")
    return log is None or isinstance(log, dict) and set(log) - {"file"} == {"bytes", "sha256"} \
        and type(log["bytes"]) is int and log["bytes"] >= 0 and isinstance(log["sha256"], str) \
        and _HEX64.fullmatch(log["sha256"]) is not None and (
            "file" not in log or isinstance(log["file"], list) and len(log["file"]) == 2
            and all(type(n) is int and n >= 0 for n in log["file"]))


def check_statics(path: Path, saved: dict[str, dict[str, Any]],
                  expected: dict[str, dict[str, Any]]) -> None:
    """Refuse a checkpoint whose static values are not those ``expected`` has (an artifact's
    are fixed at compile time), naming the first that differs."""
    if set(saved) != set(expected):
        names = sorted(set(saved) ^ set(expected))
        raise ArtifactError(f"checkpoint {path}: static values differ in which exist "
                            f"({', '.join(names[:3])})")
    for name in sorted(saved):
        if saved[name] != expected[name]:
            raise ArtifactError(f"checkpoint {path}: {name} is {_show(saved[name])}; this "
                                f"artifact was compiled with {_show(expected[name])}")


def _show(entry: dict[str, Any]) -> str:
    return entry["repr"] if "repr" in entry else f"Val({entry['value']!r})"


def state_from_checkpoint(path: str | Path, manifest: Manifest
                          ) -> tuple[list[np.ndarray], Checkpoint]:
    """The flat state an artifact's step takes (``manifest``'s ``layout.state_names`` order),
    read from the checkpoint at ``path`` and checked against the artifact: the same leaves, of
    the same shapes and dtypes, and the static values it was compiled with."""
    layout = manifest.layout
    names = list(layout.state_names)
    specs = dict(zip(names, manifest.inputs))
    ckpt = read_checkpoint(path, max_bytes([{"shape": s.shape, "dtype": s.dtype}
                                            for s in manifest.state_inputs]))
    if sorted(ckpt.names) != sorted(names):
        missing = [n for n in names if n not in ckpt.names]
        extra = [n for n in ckpt.names if n not in names]
        raise ArtifactError(f"checkpoint {path} is not of this artifact's model: "
                            + "; ".join(filter(None, [
                                f"missing {', '.join(missing[:3])}" if missing else "",
                                f"not in the artifact: {', '.join(extra[:3])}" if extra
                                else ""])))
    by_name = dict(zip(ckpt.names, ckpt.arrays))
    for name in names:
        a, spec = by_name[name], specs[name]
        if a.shape != spec.shape or str(a.dtype) != spec.dtype:
            raise ArtifactError(f"checkpoint {path}: {name} is {a.dtype}{list(a.shape)}; the "
                                f"artifact takes {spec.dtype}{list(spec.shape)}")
    if layout.statics is not None:
        check_statics(Path(path), ckpt.statics, layout.statics)
    return [by_name[n] for n in names], ckpt
