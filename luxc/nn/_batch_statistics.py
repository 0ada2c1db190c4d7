"""Batch normalisation with its batch statistics, and a derivative written so the training
step reads each activation as few times as it can.

Differentiated as written, ``(x - μ) / sqrt(v + ε) · γ + β`` gives a backward pass with four
reductions over the activation (the gradients of γ and β, and of μ and v through ``x``) and
more elementwise passes than it needs; XLA:CPU keeps them apart. BatchNorm was about a quarter of
ResNet-20's training step (Lux's CIFAR-10 tutorial, batch 128: 503.7 ms, 380.3 with every
BatchNorm removed, interleaved in one process, 2026-12-07; benchmarks/README.md, *Levers*).

The tangent below is the same linear map, grouped so that every per-channel factor multiplies
a reduced ``(C,)`` value rather than the whole activation. Reverse mode (jax transposes the
tangent) then needs two sums over the activation, ``Σ g`` and ``Σ (x - μ) g``, which serve
the gradients of ``x``, γ and β alike: the classic short BatchNorm backward. A ``custom_jvp``
rather than a ``custom_vjp`` keeps forward mode, ``jax.hessian`` and ``jax.jvp`` working.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def batch_normalise(x: jax.Array, scale: jax.Array, bias: jax.Array,
                    epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""``(y, μ, v)``: :math:`y = \gamma (x - \mu)/\sqrt{v + \epsilon} + \beta` with the mean
    :math:`\mu` and (biased) variance :math:`v` of ``x`` over every axis but the last.

    ``scale`` and ``bias`` have shape ``(C,)``, ``C = x.shape[-1]``. The variance is the
    mean of :math:`(x - \mu)^2` (two passes, as Lux's ``mean_var``), not
    :math:`E[x^2] - \mu^2`, which cancels catastrophically for activations far from zero.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return _normalised(x, scale, bias, epsilon)
    return _normalised_short_derivative(x, scale, bias, epsilon)


def _normalised(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    y = (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
    return y, mean, var


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _normalised_short_derivative(x, scale, bias, epsilon):
    return _normalised(x, scale, bias, epsilon)


@_normalised_short_derivative.defjvp
def _tangent(epsilon, primals, tangents):
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    y, mean, var = _normalised(x, scale, bias, epsilon)
    axes = tuple(range(x.ndim - 1))
    inv = jax.lax.rsqrt(var + epsilon)
    centred = x - mean
    dmean = jnp.mean(dx, axis=axes)
    half_dvar = jnp.mean(dx * centred, axis=axes)
    a = scale * inv
    # Every (C,)-shaped factor stays on the reduced side of its product: transposed, the terms
    # in dmean and dbias share Σ g, the terms in half_dvar and dscale share Σ centred·g.
    dy = (dx * a - dmean * a - centred * (half_dvar * (a * inv * inv))
          + centred * (dscale * inv) + dbias)
    return (y, mean, var), (dy, dmean, 2 * half_dvar)
