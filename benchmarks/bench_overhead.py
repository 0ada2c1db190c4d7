"""Per-step time of AutoXLA against a hand-written ``jax.jit`` + optax step (same maths).

Run: python benchmarks/bench_overhead.py
Variants run interleaved; medians reported. On the tiny, dispatch-bound model:

* ``luxc AutoXLA``: ``single_train_step_`` per step; target ≤ 1.05× the hand-written jit.
* ``luxc executable, called directly``: the same cached executable without luxc's Python, which
  separates luxc's per-call overhead from differences in the compiled program.
* ``luxc train_steps_, K=100``: 100 steps per call (one ``lax.scan``); target ≤ 0.25× per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import luxc
from luxc import nn
from luxc.training import single_train_step_, train_steps_

try:
    from benchmarks._timing import interleaved, report, steps
except ImportError:
    from _timing import interleaved, report, steps


def _hand_written(model, optimizer):
    def loss_fn(ps, st, x, y):
        logits, _ = model(x, ps, st)
        return jnp.mean(optax.softmax_cross_entropy(logits, y))

    def step(ps, opt_state, st, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(ps, st, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, ps)
        return optax.apply_updates(ps, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def compare(model, x, y, calls: int, scan_steps: int = 0, rounds: int = 9):
    optimizer = optax.adam(1e-3)
    ps, st = luxc.setup(jax.random.key(0), model)
    loss = luxc.CrossEntropyLoss(logits=True)
    state = {"ts": luxc.TrainState(model, ps, st, optimizer)}
    hand = _hand_written(model, optimizer)
    hs = {"ps": jax.tree.map(jnp.copy, ps), "opt": optimizer.init(ps)}

    def autoxla():
        _, out, _, state["ts"] = single_train_step_(luxc.AutoXLA(), loss, (x, y), state["ts"],
                                                    return_gradients=False)
        return out

    def jitted():
        hs["ps"], hs["opt"], out = hand(hs["ps"], hs["opt"], st, x, y)
        return out

    autoxla()
    (entry,) = state["ts"].cache.entries()
    direct_state = luxc.TrainState(model, ps, st, optimizer)
    ds = {"ps": direct_state.parameters, "opt": direct_state.optimizer_state}

    def direct():
        ds["ps"], ds["opt"], _, out, _, _ = entry.call(ds["ps"], ds["opt"], st, (x, y))
        return out

    variants = {"hand-written jax.jit": steps(jitted, calls), "luxc AutoXLA": steps(autoxla, calls),
                "luxc executable, called directly": steps(direct, calls)}
    if scan_steps:
        batches = (jnp.broadcast_to(x, (scan_steps, *x.shape)), jnp.broadcast_to(y, (scan_steps, *y.shape)))
        scan = {"ts": luxc.TrainState(model, ps, st, optimizer)}

        def many():
            _, out, _, scan["ts"] = train_steps_(luxc.AutoXLA(), loss, batches, scan["ts"])
            return out

        variants[f"luxc train_steps_, K={scan_steps}"] = steps(many, calls // scan_steps)
    medians = interleaved(variants, rounds=rounds, calls=1)
    if scan_steps:  # the K-step variant ran calls // K calls of K steps each
        medians[f"luxc train_steps_, K={scan_steps}"] *= calls / (calls // scan_steps * scan_steps)
    return medians


def main() -> None:
    print(f"jax {jax.__version__} on {jax.default_backend()}")
    key = jax.random.key(1)
    tiny = nn.Chain(nn.Dense(2, 32, jax.nn.relu), nn.Dense(32, 32, jax.nn.relu), nn.Dense(32, 2))
    x, y = jax.random.normal(key, (8, 2)), jax.nn.one_hot(jnp.arange(8) % 2, 2)
    n = 2000
    m = compare(tiny, x, y, calls=n, scan_steps=100, rounds=21)
    report(f"tiny 2-32-32-2 MLP, batch 8, Adam; per {n} steps", {k: v / n for k, v in m.items()},
           "hand-written jax.jit")
    mlp = nn.Chain(nn.Dense(784, 512, jax.nn.relu), nn.Dense(512, 512, jax.nn.relu), nn.Dense(512, 10))
    x = jax.random.normal(key, (256, 784))
    y = jax.nn.one_hot(jax.random.randint(key, (256,), 0, 10), 10)
    n = 50
    m = compare(mlp, x, y, calls=n)
    report(f"784-512-512-10 MLP, batch 256, Adam; per {n} steps", {k: v / n for k, v in m.items()},
           "hand-written jax.jit")


if __name__ == "__main__":
    main()
