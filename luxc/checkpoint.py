"""Checkpoints of a whole TrainState: parameters, model state, optimiser state and step.

One safetensors file, written atomically (a crash leaves the previous checkpoint intact; the
next save removes what a killed save left behind). Its metadata names every leaf by its key
path (``parameters['layer_1']['weight']``) with its dtype and shape, and holds the step; one
SHA-256 covers that metadata and every tensor, so an edited step or a swapped leaf is caught.
Loading reads the file once, checks it against the TrainState given as ``like`` leaf by leaf, and
places the arrays like ``like``'s (same devices and shardings), so resuming gives the same
training as an uninterrupted run. A checkpoint is data: loading one runs no code from it.

Sharded state, in one process or many (``luxc.distributed``): process 0 writes the gathered
state, in the same one-file format, and every process loads the whole file and keeps the pieces
its devices hold. Chosen over one file per process (orbax's way) because a checkpoint then has
one checksum covering everything and resumes on any number of processes, devices and shardings
(2 processes x 4 devices, then 1 device); the price is that the whole state passes through
process 0's host memory, which holds for the models luxc targets. Every process calls
``save_state`` and ``load_state`` with the same path, on a file system they share.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from luxc.distributed import barrier, gather, put
from luxc.runtime.atomic_write import write_atomic
from luxc.runtime.bounded_read import read_regular
from luxc.runtime.errors import ArtifactError
from luxc.runtime.leaf_names import argument_leaf_name
from luxc.runtime.tensor_codec import tensor_bytes, tensors_from_bytes
from luxc.training._state import TrainState

_FORMAT = "luxc-checkpoint-2"
# Bytes beyond the tensors a checkpoint file may have: the safetensors header and the contents
# table, a few hundred bytes a leaf.
_HEADER_BYTES, _HEADER_BYTES_PER_LEAF = 1 << 20, 2048


def _parts(ts: TrainState) -> dict[str, Any]:
    return {"parameters": ts.parameters, "states": ts.states,
            "optimizer_state": ts.optimizer_state}


def _leaves(ts: TrainState) -> tuple[list[str], list[Any], Any]:
    parts = _parts(ts)
    flat, treedef = jax.tree_util.tree_flatten_with_path(parts)
    names = [argument_leaf_name(path) for path, _ in flat]
    return names, [leaf for _, leaf in flat], treedef


def _describe(names: list[str], arrays: list[Any]) -> list[dict[str, Any]]:
    return [{"path": n, "dtype": _dtype(a), "shape": list(np.shape(a))}
            for n, a in zip(names, arrays)]


def _dtype(x: Any) -> str:
    return str(np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype)


def _digest(description: bytes, arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256(description)
    for a in arrays:
        data = np.ascontiguousarray(a).tobytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def save_state(path: str | Path, ts: TrainState) -> None:
    """Write ``ts``'s parameters, states, optimiser state and step to ``path`` atomically."""
    ts.check_alive()
    names, leaves, _ = _leaves(ts)
    arrays = [gather(x) for x in leaves]
    description = json.dumps({"step": int(ts.step), "leaves": _describe(names, arrays)},
                             sort_keys=True)
    meta = {"format": _FORMAT, "contents": description,
            "sha256": _digest(description.encode(), arrays)}
    if jax.process_index() == 0:
        write_atomic(path, tensor_bytes(arrays, meta))
    barrier(f"luxc.save_state {path}")  # no process reads the file before it is complete


def _check_contents(path: Path, meta: dict[str, str], arrays: list[np.ndarray]) -> dict:
    if meta.get("format") != _FORMAT:
        if str(meta.get("format", "")).startswith("luxc-checkpoint"):
            raise ArtifactError(f"{path} is a {meta['format']} file from an older luxc; this luxc "
                                f"reads {_FORMAT}: save it again with this luxc")
        raise ArtifactError(f"{path} is not a luxc checkpoint (format {meta.get('format')!r})")
    description = meta.get("contents", "")
    if _digest(description.encode(), arrays) != meta.get("sha256"):
        raise ArtifactError(f"checksum mismatch in checkpoint {path}: the file is corrupted or "
                            "was edited")
    try:
        contents = json.loads(description)
        step = contents["step"]
        leaves = contents["leaves"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ArtifactError(f"checkpoint {path} has no valid contents table") from None
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise ArtifactError(f"checkpoint {path} has step {step!r}; a step is a whole number >= 0")
    if not isinstance(leaves, list) or len(leaves) != len(arrays):
        raise ArtifactError(f"checkpoint {path}: its contents table lists "
                            f"{len(leaves) if isinstance(leaves, list) else '?'} leaves for "
                            f"{len(arrays)} tensors")
    for entry, a in zip(leaves, arrays):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)) or entry != {
                "path": entry["path"], "dtype": str(a.dtype), "shape": list(a.shape)}:
            raise ArtifactError(f"checkpoint {path}: the contents table does not describe its "
                                f"tensors ({entry!r})")
    return contents


def load_state(path: str | Path, like: TrainState) -> TrainState:
    """The TrainState saved at ``path``, with the model, optimiser and cache of ``like`` and the
    arrays placed like ``like``'s (same devices and shardings).

    Raises ``ArtifactError`` naming the first leaf that differs (``parameters['w']['weight']``:
    its shape or dtype), a leaf missing or extra, a corrupt or edited file."""
    path = Path(path)
    names, refs, treedef = _leaves(like)
    expected = _describe(names, refs)
    limit = sum(int(np.prod(e["shape"], dtype=np.int64)) * np.dtype(e["dtype"]).itemsize
                for e in expected) + _HEADER_BYTES + _HEADER_BYTES_PER_LEAF * len(expected)
    arrays, meta = tensors_from_bytes(read_regular(path, "checkpoint", limit), f"checkpoint {path}")
    contents = _check_contents(path, meta, arrays)
    saved = contents["leaves"]
    saved_paths = [e["path"] for e in saved]
    if saved_paths != names:
        # The user's own leaves first: a parameter tells more than an optimiser counter.
        first = {"parameters": 0, "states": 1, "optimizer_state": 2}
        order = lambda n: first.get(n.split("[")[0].split(".")[0], 3)  # noqa: E731
        missing = sorted((n for n in names if n not in saved_paths), key=order)
        extra = sorted((n for n in saved_paths if n not in names), key=order)
        raise ArtifactError(
            f"checkpoint {path} does not match this TrainState: "
            + "; ".join(filter(None, [
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"not in this TrainState: {', '.join(extra[:3])}" if extra else "",
                "the same leaves in another order" if not (missing or extra) else ""])))
    for want, got in zip(expected, saved):
        if want != got:
            raise ArtifactError(f"checkpoint {path}: {want['path']} has shape {tuple(got['shape'])} "
                                f"and dtype {got['dtype']}; this TrainState expects "
                                f"{tuple(want['shape'])} {want['dtype']}")
    placed = [_place(arr, ref) for arr, ref in zip(arrays, refs)]
    parts = jax.tree.unflatten(treedef, placed)
    return like.replace(parameters=parts["parameters"], states=parts["states"],
                        optimizer_state=parts["optimizer_state"], step=contents["step"])


def _place(array: np.ndarray, like: Any) -> jax.Array:
    sharding = getattr(like, "sharding", None)
    return put(array, sharding) if sharding is not None else jax.numpy.asarray(array)
