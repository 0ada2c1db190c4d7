"""Per-step time of the same training step on 1, 2, 4 and 8 host devices, "data" and "fsdp".

Run: python benchmarks/bench_scaling.py
The 784-512-512-10 MLP at a global batch of 256 (strong scaling), Adam, AutoXLA. The 8 "devices"
are XLA:CPU host devices (``--xla_force_host_platform_device_count=8``) sharing this machine's
cores: on 2 cores the ratios measure what splitting the step costs (partitioned programs,
all-reduces, all-gathers), not a speed-up. Variants run interleaved; medians reported.
"""

from __future__ import annotations

import os

# Before jax starts: the host platform's device count is read once.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import optax  # noqa: E402

import luxc  # noqa: E402
from luxc import nn  # noqa: E402
from luxc.training import single_train_step_  # noqa: E402

try:
    from benchmarks._timing import interleaved, report, steps
except ImportError:
    from _timing import interleaved, report, steps


def variant(devices: int, strategy: str | None, x, y):
    """One step on the first ``devices`` devices (``strategy=None``: unsharded, one device)."""
    model = nn.Chain(nn.Dense(784, 512, jax.nn.relu), nn.Dense(512, 512, jax.nn.relu),
                     nn.Dense(512, 10))
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    data = (x, y)
    if strategy is not None:
        mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
        ts = luxc.distributed.shard(ts, mesh, strategy=strategy)
        data = luxc.distributed.shard_batch(data, mesh)
    state = {"ts": ts}
    loss = luxc.CrossEntropyLoss(logits=True)

    def step():
        _, out, _, state["ts"] = single_train_step_(luxc.AutoXLA(), loss, data, state["ts"],
                                                    return_gradients=False)
        return out

    return step


def main() -> None:
    x = jax.random.normal(jax.random.key(1), (256, 784))
    y = jax.nn.one_hot(jax.random.randint(jax.random.key(2), (256,), 0, 10), 10)
    variants = {"1 device": steps(variant(1, None, x, y), 10)}
    for n in (2, 4, 8):
        for strategy in ("data", "fsdp"):
            variants[f"{n} devices, {strategy}"] = steps(variant(n, strategy, x, y), 10)
    medians = {k: v / 10 for k, v in interleaved(variants, rounds=7, calls=3).items()}
    report(f"784-512-512-10 MLP, global batch 256, Adam, per step ({os.cpu_count()} cores)",
           medians, "1 device")


if __name__ == "__main__":
    main()
