"""Checkpoints of a whole TrainState: parameters, model state, optimiser state and step.

One safetensors file, written atomically (a crash leaves the previous checkpoint intact),
carrying the step, the pytree structure and a SHA-256 of the tensors. Loading checks all
three against the TrainState given as ``like``, so resuming gives the same training as an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np

from luxc.runtime.files import ArtifactError, read_tensors, tensor_bytes, write_atomic
from luxc.training._state import TrainState

_FORMAT = "luxc-checkpoint-1"


def _tree(ts: TrainState):
    return (ts.parameters, ts.states, ts.optimizer_state)


def _digest(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_state(path: str | Path, ts: TrainState) -> None:
    """Write ``ts``'s parameters, states, optimiser state and step to ``path`` atomically."""
    ts.check_alive()
    leaves, treedef = jax.tree.flatten(_tree(ts))
    arrays = [np.asarray(jax.device_get(x)) for x in leaves]
    meta = {"format": _FORMAT, "step": str(int(ts.step)), "structure": str(treedef),
            "sha256": _digest(arrays)}
    write_atomic(path, tensor_bytes(arrays, meta))


def load_state(path: str | Path, like: TrainState) -> TrainState:
    """The TrainState saved at ``path``, with the model, optimiser and cache of ``like`` and the
    arrays placed like ``like``'s (same devices and shardings)."""
    arrays, meta = read_tensors(path, "checkpoint")
    if meta.get("format") != _FORMAT:
        raise ArtifactError(f"{path} is not a luxc checkpoint (format {meta.get('format')!r})")
    if _digest(arrays) != meta.get("sha256"):
        raise ArtifactError(f"checksum mismatch in checkpoint {path}: the file is corrupted")
    leaves, treedef = jax.tree.flatten(_tree(like))
    if str(treedef) != meta.get("structure") or len(leaves) != len(arrays):
        raise ArtifactError(f"checkpoint {path} does not match this TrainState's structure "
                            f"(saved: {meta.get('structure')}; expected: {treedef})")
    placed = []
    for (keypath, ref), arr in zip(jax.tree_util.tree_flatten_with_path(_tree(like))[0], arrays):
        if tuple(arr.shape) != tuple(np.shape(ref)) or arr.dtype != np.asarray(ref).dtype:
            raise ArtifactError(f"checkpoint {path}: {jax.tree_util.keystr(keypath)} has shape "
                                f"{arr.shape} and dtype {arr.dtype}; expected {np.shape(ref)} "
                                f"{np.asarray(ref).dtype}")
        sharding = getattr(ref, "sharding", None)
        placed.append(jax.device_put(arr, sharding) if sharding is not None else jax.numpy.asarray(arr))
    ps, st, opt_state = jax.tree.unflatten(treedef, placed)
    return like.replace(parameters=ps, states=st, optimizer_state=opt_state,
                        step=int(meta["step"]))
