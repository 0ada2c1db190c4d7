"""The same training script on one device, on many host devices, or in many processes.

Run it:   python examples/data_parallel.py                          (one process)
          luxc launch -n 2 --devices-per-process 4 examples/data_parallel.py --strategy fsdp

Each process draws its own part of every global batch; ``shard_batch`` joins the parts into one
global batch split over the ``"data"`` mesh axis, and the compiled step all-reduces the
gradients over it. Every process ends with the same parameters.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

import luxc
from luxc import nn


def factory(seed: int = 0) -> luxc.TrainState:
    """The TrainState every process builds alike (same seed, same initial parameters)."""
    model = nn.Chain(nn.Dense(1, 64, jax.nn.relu), nn.Dense(64, 64, jax.nn.relu), nn.Dense(64, 1))
    ps, st = luxc.setup(jax.random.key(seed), model)
    return luxc.TrainState(model, ps, st, optax.adam(3e-3))


def local_batch(step: int, rows: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's ``rows`` rows of the global batch of ``step``: ``y = 2x - x³``."""
    rng = np.random.default_rng([step, rank])
    x = rng.uniform(-2, 2, size=(rows, 1)).astype(np.float32)
    return x, 2 * x - x**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=luxc.distributed.STRATEGIES, default="data")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rows", type=int, default=64, help="rows per process and step")
    args = parser.parse_args()

    luxc.distributed.initialize()  # before any other jax call; a no-op in one process
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    ts = luxc.distributed.shard(factory(), mesh, strategy=args.strategy)
    rank = jax.process_index()
    # XLA:CPU with several devices per process can deadlock in gloo when steps overlap: wait for
    # each step to finish (sync=True) when the step spans processes.
    many = jax.process_count() > 1
    for step in range(args.steps):
        data = luxc.distributed.shard_batch(local_batch(step, args.rows, rank), mesh)
        _, loss, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts,
                                                          sync=many)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {float(loss):.5f}")
    w = ts.parameters["layer_2"]["weight"]
    print(f"{jax.process_count()} process(es), {jax.device_count()} devices, strategy "
          f"{args.strategy}: layer_2.weight {w.shape} held as {len(w.addressable_shards)} local "
          f"pieces of {w.addressable_shards[0].data.shape}; {luxc.cache_info(ts)}")
    print(f"final loss {float(loss):.5f}")


if __name__ == "__main__":
    main()
