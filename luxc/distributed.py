"""The same training code on many devices and many processes, on ``jax.sharding`` and
``jax.distributed``: luxc writes no communication layer of its own.

A mesh axis (``"data"`` by default) splits the batch; the compiled step (one StableHLO module,
partitioned by Shardy/GSPMD) all-reduces the gradients over it. Two ways to hold the state:

* ``"data"`` — parameters and optimiser state replicated on every device of the axis;
* ``"fsdp"`` — every leaf of the parameters and of the optimiser state split along its largest
  dimension divisible by the axis size (replicated if none is), so each device holds about
  ``1/n`` of the state and the step gathers what it needs.

Typical use, the same script in one process or under ``luxc launch -n 2 script.py``::

    luxc.distributed.initialize()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    ts = luxc.distributed.shard(ts, mesh, strategy="fsdp")
    for x, y in local_batches:  # this process's part of each global batch
        data = luxc.distributed.shard_batch((x, y), mesh)
        _, loss, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts,
                                                          sync=jax.process_count() > 1)

``sync=True`` waits for each step: XLA:CPU with several devices per process can deadlock in its
gloo collectives when consecutive steps overlap (seen with 2 processes x 4 devices on 2 cores).

The arrays are placed on ``mesh`` with *Auto* axes whatever its axis types: luxc lets the
partitioner propagate shardings through the step (with jax's *Explicit* axes, the default of
``jax.make_mesh``, an FSDP matmul is a type error). The user's mesh object is left as it is;
place the batch with :func:`shard_batch` on it, which does the same. The compiled step refuses,
in one line before it runs, a batch on a mesh of other axis types than the TrainState's (e.g.
``jax.device_put`` on the Explicit mesh after ``shard``) and a batch on devices other than the
TrainState's (e.g. a split batch with a TrainState left on one device).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from luxc.nn import stacked_axes
from luxc.runtime.messages._leaf_names import leaf_name
from luxc.training._state import TrainState

Strategy = Literal["data", "fsdp"]
STRATEGIES = ("data", "fsdp")

# Set by ``luxc launch`` for each process (the coordinator's address is jax's own
# JAX_COORDINATOR_ADDRESS / JAX_COORDINATOR_BIND_ADDRESS, which jax reads itself).
NUM_PROCESSES_ENV = "LUXC_NUM_PROCESSES"
PROCESS_ID_ENV = "LUXC_PROCESS_ID"
HEARTBEAT_ENV = "LUXC_HEARTBEAT_TIMEOUT_SECONDS"

# The process count of the cluster managers jax detects by itself (SLURM, Open MPI).
_CLUSTER_SIZE_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"luxc.distributed.initialize: the environment variable {name} must be "
                         f"an integer; received {value!r}") from None


def _cluster_processes() -> int:
    counts = [_env_int(name) for name in _CLUSTER_SIZE_ENV if name in os.environ]
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    counts.append(len(hosts.split(",")) if hosts else 1)
    return max(counts)


def initialize() -> None:
    """Join the other processes of this job (``jax.distributed.initialize``); call it before
    any other jax call. A no-op in a single process and when already initialised.

    Under ``luxc launch`` it reads the coordinator address, the process count and id and the
    heartbeat timeout the launcher sets (``JAX_COORDINATOR_ADDRESS``, ``LUXC_NUM_PROCESSES``,
    ``LUXC_PROCESS_ID``, ``LUXC_HEARTBEAT_TIMEOUT_SECONDS``); under SLURM, Open MPI or on a
    multi-host TPU it lets jax detect them.

    >>> import luxc
    >>> luxc.distributed.initialize()  # one process: nothing to join
    """
    if jax.distributed.is_initialized():
        return
    heartbeat = {}
    if HEARTBEAT_ENV in os.environ:
        heartbeat = {"heartbeat_timeout_seconds": _env_int(HEARTBEAT_ENV)}
    if NUM_PROCESSES_ENV in os.environ:
        n = _env_int(NUM_PROCESSES_ENV)
        if n > 1:
            jax.distributed.initialize(
                coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS"), num_processes=n,
                process_id=_env_int(PROCESS_ID_ENV), **heartbeat)
    elif _cluster_processes() > 1:
        jax.distributed.initialize(**heartbeat)


def _auto(mesh: Mesh) -> Mesh:
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _check(mesh: Any, axis: str, caller: str) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{caller}: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((8,), "
                        f"('data',))); received {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(f"{caller}: axis must be one of the mesh's axes {mesh.axis_names}; "
                         f"received {axis!r}")
    return _auto(mesh)


def fsdp_spec(shape: tuple[int, ...], size: int, axis: str, *, skip: int = 0) -> PartitionSpec:
    """The FSDP split of an array of ``shape`` over ``size`` devices: along its largest
    dimension divisible by ``size`` (the first of equals), replicated if none is. The first
    ``skip`` dimensions are never split (the layer axes of a ``luxc.nn.Stack``).

    >>> fsdp_spec((3, 32), 8, "data")
    P(None, 'data')
    >>> fsdp_spec((3,), 8, "data")
    P()
    """
    divisible = [d for d in range(skip, len(shape)) if shape[d] % size == 0 and shape[d] >= size]
    if not divisible:
        return PartitionSpec()
    d = max(divisible, key=lambda i: (shape[i], -i))
    # No trailing Nones: the step's outputs carry the shortest spec, and equal specs keep the
    # compiled step's cache key unchanged from one step to the next.
    return PartitionSpec(*([None] * d), axis)


def put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``x`` placed with ``sharding``, in one process or many.

    In several processes, a host value must be the same in each (e.g. from the same seed or
    the same checkpoint): every process supplies the pieces its own devices hold.
    """
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather(x: Any) -> np.ndarray:
    """The whole value of ``x`` in this process's memory, gathered from the other processes if
    it spans several; every process must call it (it is a collective then)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to wait for in one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def shard(ts: TrainState, mesh: Mesh, *, strategy: Strategy = "data", axis: str = "data") -> TrainState:
    """``ts`` with its parameters and optimiser state placed on ``mesh`` for ``strategy``.

    ``"data"`` replicates them over ``axis``; ``"fsdp"`` splits each leaf along its largest
    dimension divisible by the size of ``axis`` (see :func:`fsdp_spec`): a ``(512, 784)``
    weight on 8 devices is held as eight ``(64, 784)`` pieces, and Adam's ``mu`` and ``nu``
    for it the same way. The layer axis of a ``luxc.nn.Stack``'s parameters is never the
    split one (``luxc.nn.stacked_axes``): the scan over layers then needs no communication
    for it. The model state (e.g. batch-norm statistics) is replicated. The
    compiled step returns the state with the same shardings, so nothing moves between steps;
    the TrainState's compile cache is shared, and a new mesh compiles once.

    In several processes, every process calls ``shard`` with the same values (same seed) and
    gets its own part of the one global state.

    The mesh: the state is placed on ``mesh``'s devices with *Auto* axes, whatever axis types
    ``mesh`` has (``jax.make_mesh`` makes *Explicit* ones, under which an FSDP matmul is a
    type error); ``mesh`` itself is not changed. Place the batch with :func:`shard_batch`
    and the same ``mesh``, which does the same: a batch placed by hand with
    ``jax.device_put(x, NamedSharding(mesh, P("data")))`` on an Explicit mesh is refused by
    the compiled step in one line saying so.

    Args:
        ts: the TrainState to place.
        mesh: the devices (``jax.make_mesh((jax.device_count(),), ("data",))``).
        strategy: ``"data"`` or ``"fsdp"``.
        axis: the mesh axis the batch is split along.

    Returns:
        A TrainState sharing ``ts``'s model, optimiser and cache.

    >>> import jax, optax, luxc
    >>> model = luxc.nn.Dense(8, 4)
    >>> ps, st = luxc.setup(jax.random.key(0), model)
    >>> ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> ts = luxc.distributed.shard(ts, mesh, strategy="fsdp")
    >>> ts.parameters["weight"].shape
    (4, 8)
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"shard: strategy must be one of {STRATEGIES}; received {strategy!r}")
    mesh = _check(mesh, axis, "shard")
    ts.check_alive()
    size = mesh.shape[axis]
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(x: Any, skip: int = 0) -> jax.Array:
        if strategy == "data":
            return put(x, replicated)
        return put(x, NamedSharding(mesh, fsdp_spec(np.shape(x), size, axis, skip=skip)))

    skips = stacked_axes(ts.model)
    # The optimiser state's leaves that mirror a parameter (Adam's mu, nu) get its split.
    optimizer_state = optax.tree_utils.tree_map_params(
        ts.optimizer, place, ts.optimizer_state, skips, transform_non_params=place)
    return ts.replace(parameters=jax.tree.map(place, ts.parameters, skips),
                      optimizer_state=optimizer_state,
                      states=jax.tree.map(lambda x: put(x, replicated), ts.states))


def shard_batch(batch: Any, mesh: Mesh, *, axis: str = "data") -> Any:
    """This process's part of a batch as one global batch split along ``axis``.

    Every leaf of ``batch`` has shape ``(b, ...)`` (batch-first) with the same ``b`` in every
    process; the result has shape ``(b * process_count, ...)``, row ``p * b + i`` being row
    ``i`` of process ``p`` (``jax.make_array_from_process_local_data``). In one process it is
    ``batch`` placed on the mesh.

    Like :func:`shard`, it uses ``mesh``'s devices with *Auto* axes, so ``mesh`` may be the
    user's Explicit one (``jax.make_mesh``'s default).

    Args:
        batch: a pytree of arrays (e.g. ``(x, y)``), this process's rows.
        mesh: the mesh given to :func:`shard`.
        axis: the mesh axis the batch is split along; the global batch size must be divisible
            by its size.

    Returns:
        The same pytree of global ``jax.Array``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> x, y = luxc.distributed.shard_batch((jnp.ones((8, 3)), jnp.zeros((8, 1))), mesh)
    >>> x.shape
    (8, 3)
    """
    mesh = _check(mesh, axis, "shard_batch")
    size, processes = mesh.shape[axis], jax.process_count()
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(batch)
    out = []
    for path, leaf in leaves:
        shape = np.shape(leaf)
        name = leaf_name("batch", path)
        if not shape or (shape[0] * processes) % size:
            rows = shape[0] if shape else "no"
            raise ValueError(
                f"shard_batch: {name} has {rows} rows in each of {processes} process(es); the "
                f"global batch must be divisible by the {size} devices of mesh axis {axis!r}")
        out.append(jax.make_array_from_process_local_data(sharding, leaf))
    return jax.tree_util.tree_unflatten(treedef, out)
