"""Sharded artifacts (``luxc compile --mesh data=8``): the mesh a step runs on, as the manifest
records it, and the mesh, shardings and placement ``luxc run`` uses to run it.

The shardings themselves are the exported module's own (``Exported.in_shardings_hlo``); the
manifest adds the mesh's axis names and sizes, which the module does not keep, and each input's
partition spec for ``luxc inspect``. The manifest is data: its mesh is checked against the
module's device count before it is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax import export as jax_export
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from luxc.runtime.artifacts._tensor_codec import describe
from luxc.runtime.files._errors import ArtifactError


def _sharding(x: Any) -> NamedSharding | None:
    s = getattr(x, "sharding", None)
    return s if isinstance(s, NamedSharding) and len(s.device_set) > 1 else None


def mesh_of(args: Sequence[Any]) -> dict[str, int] | None:
    """The mesh a sharded step runs on, ``{"data": 8}``; ``None`` for one device."""
    s = next((s for s in map(_sharding, args) if s is not None), None)
    return None if s is None else {str(k): int(v) for k, v in s.mesh.shape.items()}


def describe_inputs(args: Sequence[Any]) -> list[dict[str, Any]]:
    entries = describe(args)
    if mesh_of(args) is not None:  # for `luxc inspect`; loading reads the module's own
        for entry, x in zip(entries, args):
            s = _sharding(x)
            entry["sharding"] = str(s.spec) if s is not None else "P()"
    return entries


def needed_devices(axes: Mapping[str, int] | None) -> int:
    """How many devices a step on the mesh ``axes`` (the manifest's ``mesh``: axis names to
    sizes, already checked; ``None`` for one device) runs on; raises ``ArtifactError`` saying
    how to get them if this machine has fewer (checked before the module is even read)."""
    if axes is None:
        return 1
    needed = int(np.prod(list(axes.values())))
    if jax.device_count() < needed:
        described = ",".join(f"{k}={v}" for k, v in axes.items())
        raise ArtifactError(
            f"this artifact's step is sharded over {needed} devices (mesh {described}); this "
            f"machine has {jax.device_count()}: on CPU run it with XLA_FLAGS="
            f"--xla_force_host_platform_device_count={needed}, or compile it again without a mesh")
    return needed


def _load_mesh(axes: Mapping[str, int] | None, exported: jax_export.Exported) -> Mesh | None:
    """The mesh to run a sharded artifact on (this machine's first devices), or ``None``."""
    needed = needed_devices(axes)
    if exported.nr_devices != needed:
        raise ArtifactError(f"the step runs on {exported.nr_devices} devices but the manifest's "
                            f"mesh describes {needed}")
    if needed == 1 or axes is None:
        return None
    devices = np.array(jax.devices()[:needed]).reshape(tuple(axes.values()))
    return Mesh(devices, tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def input_shardings(axes: Mapping[str, int] | None, exported: jax_export.Exported) -> list[Any]:
    """Each input's sharding on this machine's devices (``None`` for a one-device step) for a
    step on the mesh ``axes``; raises ``ArtifactError`` saying how many devices the step needs
    if there are fewer."""
    mesh = _load_mesh(axes, exported)
    if mesh is None:
        return [None] * len(exported.in_avals)
    return [s or NamedSharding(mesh, PartitionSpec()) for s in exported.in_shardings_jax(mesh)]


def put(arrays: Sequence[Any], shardings: Sequence[Any]) -> list[jax.Array]:
    return [jax.numpy.asarray(a) if s is None else jax.device_put(a, s)
            for a, s in zip(arrays, shardings)]
