"""luxc and its JAX peers on the workloads: each step is written the way its users write it.

Every step takes the batch as an argument (a batch closed over becomes a compile-time constant
that XLA folds into the program) and returns a loss the caller can wait on.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import luxc
from luxc.training import single_train_step_, train_steps_

try:
    from benchmarks import workloads as wl
except ImportError:  # run from benchmarks/
    import workloads as wl

Step = Callable[[], object]


def luxc_step(work: wl.Workload, x, y, options: luxc.CompileOptions | None = None) -> Step:
    """``single_train_step_`` with the AutoXLA backend (``options``: its CompileOptions)."""
    model = work.model()
    ps, st = luxc.setup(jax.random.key(0), model)
    state = {"ts": luxc.TrainState(model, ps, st, optax.adam(1e-3))}
    loss = work.loss()

    def step():
        _, out, _, state["ts"] = single_train_step_(luxc.AutoXLA(), loss, (x, y), state["ts"],
                                                    return_gradients=False, compile_options=options)
        return out

    def flops() -> float | None:
        """The FLOPs of one step (the cached executable: the same key as the step's), loops
        counted as often as they run."""
        cs = luxc.compile_step(loss, (x, y), state["ts"], compile_options=options,
                               return_gradients=False, donate=True)
        return cs.step_flops()

    step.flops = flops
    return step


def luxc_steps(work: wl.Workload, x, y, k: int = 8) -> Step:
    """``train_steps_``: ``k`` steps in one compiled call, on ``k`` copies of the batch (the
    step's ``steps_per_call`` tells the timer to count each call as ``k`` steps)."""
    model = work.model()
    ps, st = luxc.setup(jax.random.key(0), model)
    state = {"ts": luxc.TrainState(model, ps, st, optax.adam(1e-3))}
    loss, batches = work.loss(), (jnp.stack([x] * k), jnp.stack([y] * k))

    def step():
        _, losses, _, state["ts"] = train_steps_(luxc.AutoXLA(), loss, batches, state["ts"])
        return losses

    step.steps_per_call = k
    return step


def loss_fn(key: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The workload's loss, written out as a JAX user would (the same formulas as luxc's)."""
    if key in ("tiny", "transformer"):
        return lambda p, y: jnp.mean(jnp.square(p - y))
    if key in ("mlp", "lenet"):
        return lambda p, y: jnp.mean(optax.softmax_cross_entropy(p, y))

    def dice(p, y):
        num = 2 * jnp.sum(y * p, axis=1) + 1
        return jnp.mean(1 - num / (jnp.sum(p * p, axis=1) + jnp.sum(y * y, axis=1) + 1))

    return dice


def jax_jit_step(work: wl.Workload, x, y, hand_cast_bf16: bool = False) -> Step:
    """The plain-JAX way: the same model function, ``value_and_grad`` and optax Adam in one
    donating ``jax.jit``. ``hand_cast_bf16``: what a JAX user writes for bf16 (jmp's
    recipe): parameters and input cast to bfloat16 inside the step, the output back to
    float32 for the loss."""
    model = work.model()
    params, st = luxc.setup(jax.random.key(0), model)
    loss = loss_fn(work.key)

    def forward(p, x):
        if not hand_cast_bf16:
            return model(x, p, st)[0]
        half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), (p, x))
        return model(half[1], half[0], st)[0].astype(jnp.float32)

    return jit_adam_step(lambda p, x, y: loss(forward(p, x), y), params, x, y)


def jit_adam_step(loss: Callable, params, x, y) -> Step:
    """``loss(params, x, y)``'s ``value_and_grad`` and optax Adam(1e-3) in one donating
    ``jax.jit``, the parameters and optimiser state carried between calls."""
    opt = optax.adam(1e-3)

    def update(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    update = jax.jit(update, donate_argnums=(0, 1))
    state = {"p": params, "o": opt.init(params)}

    def step():
        state["p"], state["o"], out = update(state["p"], state["o"], x, y)
        return out

    # The jitted update and the carried state, for a caller that inspects the compiled step.
    step.update, step.state = update, state
    return step


def _nnx_model(key: str):
    from flax import nnx

    rngs = nnx.Rngs(0)
    if key in ("tiny", "mlp"):
        return _nnx_mlp(rngs, (4, 32, 32, 2) if key == "tiny" else (784, 512, 512, 10))
    build = {"lenet": _nnx_lenet, "transformer": _nnx_block}.get(key, _nnx_head)
    return build(rngs)


def _nnx_mlp(rngs, sizes):
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])

        def __call__(self, h):
            for layer in self.layers[:-1]:
                h = nnx.relu(layer(h))
            return self.layers[-1](h)

    return MLP()


def _nnx_lenet(rngs):
    from flax import nnx

    class LeNet(nnx.Module):
        def __init__(self):
            self.c1 = nnx.Conv(1, 6, (5, 5), padding="VALID", rngs=rngs)
            self.c2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
            self.d = nnx.List([nnx.Linear(256, 120, rngs=rngs), nnx.Linear(120, 84, rngs=rngs),
                               nnx.Linear(84, 10, rngs=rngs)])

        def __call__(self, h):
            h = nnx.max_pool(nnx.relu(self.c1(h)), (2, 2), (2, 2))
            h = nnx.max_pool(nnx.relu(self.c2(h)), (2, 2), (2, 2))
            h = nnx.relu(self.d[0](h.reshape(h.shape[0], -1)))
            return self.d[2](nnx.relu(self.d[1](h)))

    return LeNet()


def _nnx_block(rngs):
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self):
            self.ln1, self.ln2 = nnx.LayerNorm(wl.W, rngs=rngs), nnx.LayerNorm(wl.W, rngs=rngs)
            self.qkv = nnx.Linear(wl.W, 3 * wl.W, rngs=rngs)
            self.out = nnx.Linear(wl.W, wl.W, rngs=rngs)
            self.up, self.down = nnx.Linear(wl.W, wl.M, rngs=rngs), nnx.Linear(wl.M, wl.W, rngs=rngs)

        def __call__(self, x):
            q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
            heads = [t.reshape(*x.shape[:2], wl.H, wl.W // wl.H) for t in (q, k, v)]
            x = x + self.out(wl.attention(*heads).reshape(x.shape))
            return x + self.down(nnx.gelu(self.up(self.ln2(x))))

    return Block()


def _nnx_head(rngs):
    from flax import nnx

    class Head(nnx.Module):
        def __init__(self):
            self.d = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, x):
            return nnx.sigmoid(self.d(x))[..., 0]

    return Head()


def flax_nnx_step(work: wl.Workload, x, y) -> Step:
    """flax NNX: a stateful module and ``nnx.Optimizer`` under ``nnx.jit``."""
    return nnx_adam_step(_nnx_model(work.key), loss_fn(work.key), x, y)


def nnx_adam_step(model, loss: Callable, x, y) -> Step:
    """``loss(model(x), y)`` with ``nnx.value_and_grad`` and an Adam(1e-3) ``nnx.Optimizer``
    under ``nnx.jit``."""
    from flax import nnx

    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def update(model, optimizer, x, y):
        value, grads = nnx.value_and_grad(lambda m: loss(m(x), y))(model)
        optimizer.update(model, grads)
        return value

    return lambda: update(model, optimizer, x, y)
