"""One training step (forward, loss, backward, Adam) in luxc and its peers, same run, interleaved.

    pip install equinox flax torch==2.13.0      # the peers (not luxc dependencies)
    python benchmarks/bench_peers.py

Cases: the 784-512-512-10 MLP at batch 256 and LeNet-5 at batch 128, both with softmax
cross-entropy on logits and Adam(1e-3). Each variant is written the way its users write it, and
every jitted step takes the batch as an argument, as a training loop must (a batch closed over
becomes a compile-time constant, which XLA folds into the program).
Peers that are not installed are skipped (and said so).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn
from luxc.training import single_train_step_

try:
    from benchmarks._timing import interleaved, report, steps
except ImportError:
    from _timing import interleaved, report, steps

Case = dict[str, Callable[[], object]]


def _has(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _luxc(model, x, y):
    ps, st = luxc.setup(jax.random.key(0), model)
    state = {"ts": luxc.TrainState(model, ps, st, optax.adam(1e-3))}
    loss = luxc.CrossEntropyLoss(logits=True)

    def step():
        _, out, _, state["ts"] = single_train_step_(luxc.AutoXLA(), loss, (x, y), state["ts"],
                                                    return_gradients=False)
        return out

    return step


def _jax_jit(model, x, y):
    ps, st = luxc.setup(jax.random.key(0), model)
    return _optax_jit_step(lambda p, x: model(x, p, st)[0], ps, x, y)


def _optax_jit_step(apply: Callable, params, x, y) -> Callable[[], object]:
    """The plain-JAX way: value_and_grad + optax Adam in one donating ``jax.jit``."""
    opt = optax.adam(1e-3)

    def update(params, opt_state, x, y):
        def loss_fn(p):
            return jnp.mean(optax.softmax_cross_entropy(apply(p, x), y))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    update = jax.jit(update, donate_argnums=(0, 1))
    state = {"p": params, "o": opt.init(params)}

    def step():
        state["p"], state["o"], out = update(state["p"], state["o"], x, y)
        return out

    return step


def _flax(kind, x, y):
    import flax.linen as fnn

    class MLP(fnn.Module):
        @fnn.compact
        def __call__(self, h):
            h = fnn.relu(fnn.Dense(512)(h))
            h = fnn.relu(fnn.Dense(512)(h))
            return fnn.Dense(10)(h)

    class LeNet(fnn.Module):
        @fnn.compact
        def __call__(self, h):
            h = fnn.max_pool(fnn.relu(fnn.Conv(6, (5, 5), padding="VALID")(h)), (2, 2), (2, 2))
            h = fnn.max_pool(fnn.relu(fnn.Conv(16, (5, 5), padding="VALID")(h)), (2, 2), (2, 2))
            h = h.reshape(h.shape[0], -1)
            h = fnn.relu(fnn.Dense(120)(h))
            h = fnn.relu(fnn.Dense(84)(h))
            return fnn.Dense(10)(h)

    module = MLP() if kind == "mlp" else LeNet()
    params = module.init(jax.random.key(0), x)
    return _optax_jit_step(module.apply, params, x, y)


def _equinox(kind, x, y):
    import equinox as eqx

    key = jax.random.key(0)
    if kind == "mlp":
        model = eqx.nn.MLP(784, 10, 512, 2, activation=jax.nn.relu, key=key)
        forward = jax.vmap(model.__class__.__call__, in_axes=(None, 0))
        xs = x
    else:
        k = jax.random.split(key, 5)

        class LeNet(eqx.Module):
            layers: list

            def __init__(self):
                self.layers = [eqx.nn.Conv2d(1, 6, 5, key=k[0]), eqx.nn.Conv2d(6, 16, 5, key=k[1]),
                               eqx.nn.Linear(256, 120, key=k[2]), eqx.nn.Linear(120, 84, key=k[3]),
                               eqx.nn.Linear(84, 10, key=k[4])]

            def __call__(self, h):  # h: (1, 28, 28), equinox is channels-first per sample
                pool = eqx.nn.MaxPool2d(2, 2)
                h = pool(jax.nn.relu(self.layers[0](h)))
                h = pool(jax.nn.relu(self.layers[1](h))).reshape(-1)
                h = jax.nn.relu(self.layers[2](h))
                h = jax.nn.relu(self.layers[3](h))
                return self.layers[4](h)

        model = LeNet()
        forward = jax.vmap(LeNet.__call__, in_axes=(None, 0))
        xs = jnp.transpose(x, (0, 3, 1, 2))
    opt = optax.adam(1e-3)

    @eqx.filter_jit(donate="all-except-first")
    def update(batch, model, opt_state):
        def loss_fn(m):
            return jnp.mean(optax.softmax_cross_entropy(forward(m, batch[0]), batch[1]))

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    state = {"m": model, "o": opt.init(eqx.filter(model, eqx.is_array))}

    def step():
        state["m"], state["o"], out = update((xs, y), state["m"], state["o"])
        return out

    return step


def _torch(kind, x, y, compiled):
    # Before torch loads OpenMP: idle threads sleep instead of spinning on the cores the next
    # variant needs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(2)
    tnn = torch.nn
    if kind == "mlp":
        model = tnn.Sequential(tnn.Linear(784, 512), tnn.ReLU(), tnn.Linear(512, 512), tnn.ReLU(),
                               tnn.Linear(512, 10))
        tx = torch.from_numpy(np.asarray(x).copy())
    else:
        model = tnn.Sequential(tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2),
                               tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                               tnn.Linear(256, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
                               tnn.Linear(84, 10))
        tx = torch.from_numpy(np.asarray(jnp.transpose(x, (0, 3, 1, 2))).copy())
    ty = torch.from_numpy(np.asarray(jnp.argmax(y, -1)).astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = tnn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(tx), ty)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(train_step) if compiled else train_step

    class Done:
        def __init__(self, t):
            self.t = t

        def block_until_ready(self):
            return self.t.item()

    return lambda: Done(fn())


def _case(kind: str) -> tuple[str, Case, str]:
    key = jax.random.key(1)
    if kind == "mlp":
        model = nn.Chain(nn.Dense(784, 512, jax.nn.relu), nn.Dense(512, 512, jax.nn.relu),
                         nn.Dense(512, 10))
        x = jax.random.normal(key, (256, 784))
        y = jax.nn.one_hot(jax.random.randint(key, (256,), 0, 10), 10)
        title = "784-512-512-10 MLP, batch 256, Adam"
    else:
        from luxc.examples.lenet import make_model

        model = make_model()
        x = jax.random.normal(key, (128, 28, 28, 1))
        y = jax.nn.one_hot(jax.random.randint(key, (128,), 0, 10), 10)
        title = "LeNet-5, batch 128, Adam"
    variants: Case = {"luxc AutoXLA": _luxc(model, x, y), "jax.jit + optax": _jax_jit(model, x, y)}
    skipped = []
    for name, module, make in (("flax.linen", "flax", lambda: _flax(kind, x, y)),
                               ("equinox", "equinox", lambda: _equinox(kind, x, y)),
                               ("torch eager", "torch", lambda: _torch(kind, x, y, False)),
                               ("torch.compile", "torch", lambda: _torch(kind, x, y, True))):
        if _has(module):
            variants[name] = make()
        else:
            skipped.append(name)
    if skipped:
        title += f" (not installed: {', '.join(skipped)})"
    return title, variants, "luxc AutoXLA"


def main(calls: int = 20) -> None:
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; {calls} steps per sample, "
          "9 interleaved rounds, median per step")
    for kind in ("mlp", "lenet"):
        title, variants, baseline = _case(kind)

        medians = interleaved({k: steps(v, calls) for k, v in variants.items()}, rounds=9, calls=1)
        report(title, {k: v / calls for k, v in medians.items()}, baseline)


if __name__ == "__main__":
    main()
