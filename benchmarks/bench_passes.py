"""Is each luxc pass faster on this platform? A pass is only in a platform's default pipeline
if it wins here. Run: python benchmarks/bench_passes.py

Each case compiles the same training step (objective + gradient + Adam) with different pass
pipelines / XLA options, then times them interleaved with sync=True.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import luxc
from luxc import nn

try:
    from benchmarks._timing import interleaved, report
except ImportError:  # run as a script from benchmarks/
    from _timing import interleaved, report


def _step_variants(loss, model, data, variants):
    key = jax.random.key(0)
    ps, st = luxc.setup(key, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    fns = {}
    for name, options in variants.items():
        cs = luxc.compile_step(loss, data, ts, compile_options=options)
        rewrites = {r.name: r.rewrites for r in cs.pass_report}
        fns[f"{name} {rewrites or ''}"] = (lambda cs=cs: cs(ts, data, sync=True))
    return fns


def dice_segmentation(n: int = 16, hw: int = 128):
    """A per-pixel sigmoid head under a Dice loss: three sums of (n, hw, hw) per step."""
    @luxc.compact(w=jnp.ones(()), b=jnp.zeros(()))
    def head(self, x):
        return jax.nn.sigmoid(self.w * x + self.b)

    key = jax.random.key(1)
    x = jax.random.normal(key, (n, hw, hw))
    y = (jax.random.uniform(key, (n, hw, hw)) > 0.5).astype(jnp.float32)
    return _step_variants(luxc.DiceCoeffLoss(), head, (x, y), {
        "none": luxc.CompileOptions(passes="none"),
        "fuse_loss_reductions": luxc.CompileOptions(passes=["fuse_loss_reductions"]),
        "fuse_loss_reductions + no fusion emitters": luxc.CompileOptions(
            passes=["fuse_loss_reductions"], xla_options={"xla_cpu_use_fusion_emitters": False}),
        "none + no fusion emitters": luxc.CompileOptions(
            passes="none", xla_options={"xla_cpu_use_fusion_emitters": False}),
    })


def batchnorm_mlp(batch: int = 256):
    """An MLP with BatchNorm: (x - μ) / sqrt(σ² + ε) in every normalisation."""
    model = nn.Chain(nn.Dense(256, 512, jax.nn.relu), nn.BatchNorm(512), nn.Dense(512, 512),
                     nn.BatchNorm(512, jax.nn.relu), nn.Dense(512, 10))
    key = jax.random.key(2)
    x = jax.random.normal(key, (batch, 256))
    y = jax.nn.one_hot(jax.random.randint(key, (batch,), 0, 10), 10)
    return _step_variants(luxc.CrossEntropyLoss(logits=True), model, (x, y), {
        "none": luxc.CompileOptions(passes="none"),
        "fuse_rsqrt": luxc.CompileOptions(passes=["fuse_rsqrt"]),
    })


def lenet(batch: int = 128):
    """LeNet-5: two 2×2 max-pools, whose gradient XLA:CPU computes with select_and_scatter."""
    from luxc.examples.lenet import factory

    loss, data, ts = factory(batch)
    return _step_variants(loss, ts.model, data, {
        "none": luxc.CompileOptions(passes="none"),
        "maxpool_grad_select": luxc.CompileOptions(passes=["maxpool_grad_select"]),
        "conv_few_channels": luxc.CompileOptions(passes=["conv_few_channels"]),
        "both": luxc.CompileOptions(passes=["maxpool_grad_select", "conv_few_channels"]),
    })


def main() -> None:
    print(f"jax {jax.__version__} on {jax.default_backend()}; medians of 7 interleaved rounds")
    m = interleaved(dice_segmentation(), rounds=7, calls=10)
    report("Dice loss step, (16, 128, 128) per-pixel head", m, next(iter(m)))
    m = interleaved(batchnorm_mlp(), rounds=7, calls=20)
    report("BatchNorm MLP step, batch 256", m, next(iter(m)))
    m = interleaved(lenet(), rounds=7, calls=10)
    report("LeNet-5 step, batch 128", m, next(iter(m)))


if __name__ == "__main__":
    main()
