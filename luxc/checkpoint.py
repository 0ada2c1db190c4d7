"""Checkpoints of a whole TrainState: parameters, model state, optimiser state and step.

One safetensors file, written atomically (a crash leaves the previous checkpoint intact; the
next save removes what a killed save left behind). Its metadata names every leaf by its key
path (``parameters['layer_1']['weight']``) with its dtype and shape, and holds the step; one
SHA-256 covers that metadata and every tensor, so an edited step or a swapped leaf is caught.
Static values (``luxc.Val``, part of the state's structure) are saved and restored too. The file
format is :mod:`luxc.runtime.artifacts._checkpoint_format`, which ``luxc run`` writes and reads as well.
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

from pathlib import Path
from typing import Any

import jax
import numpy as np

from luxc.distributed import barrier, gather, put
from luxc.nn._core import Val
from luxc.runtime.artifacts._checkpoint_format import (
    checkpoint_bytes,
    describe,
    max_bytes,
    read_checkpoint,
    static_entry,
    static_value,
)
from luxc.runtime.artifacts._checkpoint_format import digest as _digest  # noqa: F401 - tests recompute it
from luxc.runtime.files._atomic_write import write_atomic
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._leaf_names import argument_leaf_name
from luxc.training._mixed_precision import initial_loss_scaling
from luxc.training._state import TrainState


def _parts(ts: TrainState) -> dict[str, Any]:
    parts = {"parameters": ts.parameters, "states": ts.states,
             "optimizer_state": ts.optimizer_state}
    if ts._loss_scaling is not None:  # float16 mixed precision's dynamic loss scale
        parts["loss_scaling"] = ts._loss_scaling
    return parts


def _name(path: tuple) -> str:
    return argument_leaf_name(path)


def _leaves(ts: TrainState) -> tuple[list[str], list[Any], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(_parts(ts))
    return [_name(path) for path, _ in flat], [leaf for _, leaf in flat], treedef


def statics(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The static values (``luxc.Val``) of ``{"parameters": ..., "states": ...,
    "optimizer_state": ...}`` by key path, as a checkpoint stores them."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, Val))
    return {_name(path): static_entry(leaf.value, repr(leaf)) for path, leaf in flat if isinstance(leaf, Val)}


def save_state(path: str | Path, ts: TrainState) -> None:
    """Write ``ts``'s parameters, states (static values included), optimiser state and step to
    ``path`` atomically."""
    ts.check_alive()
    names, leaves, _ = _leaves(ts)
    arrays = [gather(x) for x in leaves]
    data = checkpoint_bytes(names, arrays, ts.step, statics(_parts(ts)))
    if jax.process_index() == 0:
        write_atomic(path, data)
    barrier(f"luxc.save_state {path}")  # no process reads the file before it is complete


def load_state(path: str | Path, like: TrainState) -> TrainState:
    """The TrainState saved at ``path``, with the model, optimiser and cache of ``like``, the
    static values (``luxc.Val``) the checkpoint holds, and the arrays placed like ``like``'s
    (same devices and shardings).

    Raises ``ArtifactError`` naming the first leaf that differs (``parameters['w']['weight']``:
    its shape or dtype), a leaf missing or extra, a static value of another type than
    ``like``'s or a ``training`` flag other than ``like``'s, a corrupt or edited file."""
    path = Path(path)
    names, refs, _ = _leaves(like)
    # room for a float16 run's loss scaling (three scalars) the TrainState may not have yet
    ckpt = read_checkpoint(path, max_bytes(describe(names, refs)) + (1 << 12))
    if like._loss_scaling is None and any(n.startswith("loss_scaling") for n in ckpt.names):
        like = like.replace(loss_scaling=initial_loss_scaling())  # restored from the file
        names, refs, _ = _leaves(like)
    expected = describe(names, refs)
    saved = describe(ckpt.names, ckpt.arrays)
    if ckpt.names != names:
        # The user's own leaves first: a parameter tells more than an optimiser counter.
        first = {"parameters": 0, "states": 1, "optimizer_state": 2, "loss_scaling": 3}
        order = lambda n: first.get(n.split("[")[0].split(".")[0], 3)  # noqa: E731
        missing = sorted((n for n in names if n not in ckpt.names), key=order)
        extra = sorted((n for n in ckpt.names if n not in names), key=order)
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
    arrays = iter(_place(arr, ref) for arr, ref in zip(ckpt.arrays, refs))
    is_val = lambda x: isinstance(x, Val)  # noqa: E731
    flat, treedef = jax.tree_util.tree_flatten_with_path(_parts(like), is_leaf=is_val)
    leaves = [_restored(path, _name(p), leaf, ckpt.statics) if is_val(leaf) else next(arrays)
              for p, leaf in flat]
    parts = jax.tree.unflatten(treedef, leaves)
    return like.replace(parameters=parts["parameters"], states=parts["states"],
                        optimizer_state=parts["optimizer_state"], step=ckpt.step,
                        loss_scaling=parts.get("loss_scaling"))


def _restored(path: Path, name: str, like: Val, saved: dict[str, dict[str, Any]]) -> Val:
    entry = saved.get(name)
    if entry is None:
        raise ArtifactError(f"checkpoint {path} holds no static value {name} (this TrainState "
                            f"has {like!r}): it was saved from another model")
    if "repr" in entry:  # not rebuilt from a file (a function): must be the same already
        if entry["repr"] != repr(like):
            raise ArtifactError(f"checkpoint {path}: {name} was {entry['repr']}; this TrainState "
                                f"has {like!r}, and luxc rebuilds only numbers, booleans and "
                                "strings")
        return like
    value = static_value(entry)
    if type(value) is not type(like.value):
        raise ArtifactError(f"checkpoint {path}: {name} is Val({value!r}), a "
                            f"{type(value).__name__}; this TrainState has {like!r}, a "
                            f"{type(like.value).__name__}: the file is of another model, or was "
                            "edited")
    if name.endswith("['training']") and value != like.value:
        raise ArtifactError(f"checkpoint {path}: {name} is Val({value!r}); this TrainState has "
                            f"{like!r}. A checkpoint does not switch the mode: load it into a "
                            "TrainState in that mode (luxc.trainmode / luxc.testmode)")
    return Val(value)


def _place(array: np.ndarray, like: Any) -> jax.Array:
    sharding = getattr(like, "sharding", None)
    return put(array, sharding) if sharding is not None else jax.numpy.asarray(array)
