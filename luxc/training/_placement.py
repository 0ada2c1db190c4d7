"""Where a compiled call's arrays live, checked once per compile (a cache miss): one set of
devices and one kind of mesh.

The compiled step is one executable over one set of devices. Two placements it cannot take are
refused here, in the user's names, before anything is traced or run:

* a TrainState committed to one device with a batch split over a mesh (``jax.device_put(x,
  NamedSharding(mesh, P("data")))``): issue 18's run saw XLA:CPU wait in the gradients'
  all-reduce for a device that never joined and abort the process after 65 s; with a TrainState
  jax placed by default (uncommitted) the step moves it onto the batch's mesh, as ``jax.jit``
  does, except on an Explicit mesh, where the trace raises a ``ShardingTypeError``; arrays
  committed to different devices are refused too (jax's own error names them ``args[0]``);
* arrays on meshes of different axis types, e.g. a batch placed by hand on ``jax.make_mesh``'s
  *Explicit* mesh with a TrainState that ``luxc.distributed.shard`` placed on its *Auto*
  version: jax's error is "Mesh for all inputs should be equal".

An uncommitted array (one jax placed by default, e.g. ``jnp.ones``) in the data goes where the
step runs, as in ``jax.jit``. The signature of a compiled program includes every leaf's
sharding, so a call placed differently misses the cache and is checked again.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import NamedSharding

_FIX = ("place both on one mesh: ts = luxc.distributed.shard(ts, mesh) and "
        "batch = luxc.distributed.shard_batch(batch, mesh)")


def _named_leaves(args: tuple, names: Sequence[str]) -> list[tuple[str, jax.Array]]:
    out = []
    for name, arg in zip(names, args):
        for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
            if isinstance(leaf, jax.Array):
                out.append((name + jax.tree_util.keystr(path), leaf))
    return out


def _where(x: jax.Array) -> str:
    ids = sorted(d.id for d in x.sharding.device_set)
    return f"device {ids[0]}" if len(ids) == 1 else f"devices {ids}"


def _axis_types(x: jax.Array) -> tuple | None:
    sharding = x.sharding
    if not isinstance(sharding, NamedSharding):
        return None
    return tuple(zip(sharding.mesh.axis_names, (t.name for t in sharding.mesh.axis_types)))


def check_placement(args: tuple, names: Sequence[str], caller: str) -> None:
    """Raise ``ValueError`` (one line) if ``args`` cannot run as one compiled step.

    ``names`` are the top-level arguments' names; the last one is the data (or batches), the
    others are the TrainState's parts.
    """
    leaves = _named_leaves(args, names)
    data = names[-1]
    spread = [(n, x) for n, x in leaves if len(x.sharding.device_set) > 1]
    # Where the step runs: the devices of a split array, else of a committed one.
    anchor = spread[0] if spread else next(((n, x) for n, x in leaves if x.committed), None)
    if anchor is None:
        return
    devices = anchor[1].sharding.device_set
    # jax moves an uncommitted one-device array where the step runs (as jax.jit does), state
    # or data; on an Explicit mesh the trace would refuse it instead, so there it is refused here.
    explicit = "Explicit" in dict(_axis_types(anchor[1]) or ()).values()
    for name, x in leaves:
        movable = (not x.committed and len(x.sharding.device_set) == 1
                   and (name.startswith(data) or not explicit))
        if x.sharding.device_set != devices and not movable:
            raise ValueError(
                f"{caller}: {anchor[0]} is on {_where(anchor[1])} but {name} is on {_where(x)}; "
                f"the compiled step runs on one set of devices: {_FIX}")
    typed = [(n, _axis_types(x)) for n, x in spread if _axis_types(x) is not None]
    for name, types in typed:
        if types != typed[0][1]:
            raise ValueError(
                f"{caller}: {typed[0][0]} is on a mesh with axes {dict(typed[0][1])} but {name} "
                f"on one with axes {dict(types)}; the compiled step takes one mesh: {_FIX} (both "
                f"use the mesh's Auto axes, whatever mesh you pass)")
