"""The workloads in equinox: per-sample modules, ``jax.vmap`` over the batch, ``filter_jit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

try:
    from benchmarks import workloads as wl
    from benchmarks.peers_jax import Step, loss_fn
except ImportError:  # run from benchmarks/
    import workloads as wl
    from peers_jax import Step, loss_fn


def _model(key: str):
    import equinox as eqx

    k = jax.random.split(jax.random.key(0), 6)
    if key in ("tiny", "mlp"):
        if key == "tiny":
            return eqx.nn.MLP(4, 2, 32, 2, activation=jax.nn.relu, key=k[0])
        return eqx.nn.MLP(784, 10, 512, 2, activation=jax.nn.relu, key=k[0])
    if key == "lenet":
        class LeNet(eqx.Module):
            layers: list

            def __init__(self):
                self.layers = [eqx.nn.Conv2d(1, 6, 5, key=k[0]), eqx.nn.Conv2d(6, 16, 5, key=k[1]),
                               eqx.nn.Linear(256, 120, key=k[2]), eqx.nn.Linear(120, 84, key=k[3]),
                               eqx.nn.Linear(84, 10, key=k[4])]

            def __call__(self, h):  # h: (1, 28, 28): equinox is channels-first per sample
                pool = eqx.nn.MaxPool2d(2, 2)
                h = pool(jax.nn.relu(self.layers[0](h)))
                h = pool(jax.nn.relu(self.layers[1](h))).reshape(-1)
                h = jax.nn.relu(self.layers[2](h))
                return self.layers[4](jax.nn.relu(self.layers[3](h)))

        return LeNet()
    if key == "transformer":
        class Block(eqx.Module):
            ln1: eqx.nn.LayerNorm
            ln2: eqx.nn.LayerNorm
            qkv: eqx.nn.Linear
            out: eqx.nn.Linear
            up: eqx.nn.Linear
            down: eqx.nn.Linear

            def __init__(self):
                self.ln1, self.ln2 = eqx.nn.LayerNorm(wl.W), eqx.nn.LayerNorm(wl.W)
                self.qkv = eqx.nn.Linear(wl.W, 3 * wl.W, key=k[0])
                self.out = eqx.nn.Linear(wl.W, wl.W, key=k[1])
                self.up, self.down = eqx.nn.Linear(wl.W, wl.M, key=k[2]), eqx.nn.Linear(wl.M, wl.W, key=k[3])

            def __call__(self, x):  # x: (T, W), one sample; layers map one token
                tokens = jax.vmap
                q, k_, v = jnp.split(tokens(self.qkv)(tokens(self.ln1)(x)), 3, axis=-1)
                heads = [t.reshape(1, x.shape[0], wl.H, wl.W // wl.H) for t in (q, k_, v)]
                x = x + tokens(self.out)(wl.attention(*heads).reshape(x.shape))
                h = jax.nn.gelu(tokens(self.up)(tokens(self.ln2)(x)))
                return x + tokens(self.down)(h)

        return Block()

    class Head(eqx.Module):
        d: eqx.nn.Linear

        def __init__(self):
            self.d = eqx.nn.Linear(8, 1, key=k[0])

        def __call__(self, x):  # x: (16384, 8), one image's pixels
            return jax.nn.sigmoid(jax.vmap(self.d)(x))[:, 0]

    return Head()


def equinox_step(work: wl.Workload, x, y) -> Step:
    """equinox: ``filter_value_and_grad`` and optax Adam under a donating ``filter_jit``."""
    import equinox as eqx

    model = _model(work.key)
    xs = jnp.transpose(x, (0, 3, 1, 2)) if work.key == "lenet" else x
    forward = jax.vmap(type(model).__call__, in_axes=(None, 0))
    loss, opt = loss_fn(work.key), optax.adam(1e-3)

    @eqx.filter_jit(donate="all-except-first")
    def update(batch, model, opt_state):
        value, grads = eqx.filter_value_and_grad(lambda m: loss(forward(m, batch[0]), batch[1]))(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    state = {"m": model, "o": opt.init(eqx.filter(model, eqx.is_array))}

    def step():
        state["m"], state["o"], out = update((xs, y), state["m"], state["o"])
        return out

    return step
