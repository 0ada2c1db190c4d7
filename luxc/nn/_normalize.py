"""BatchNorm and LayerNorm; the feature axis is the last one."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._core import AbstractLayer, LayerShapeError, Val
from luxc.nn._eltype import match_eltype
from luxc.nn._init import activation_name


def _statistics_dtype(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is a narrower float (bfloat16, float16): the mean and variance
    of a normalisation are accumulated and applied in float32, and the result is cast back
    to ``x``'s dtype (mixed precision keeps statistics in float32, as torch's autocast)."""
    narrow = jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize < 4
    return x.astype(jnp.float32) if narrow else x


class BatchNorm(AbstractLayer):
    r"""Batch normalisation over every axis but the last (the channels):

    .. math::
        y = \sigma\left(\gamma \frac{x - \mu}{\sqrt{v + \epsilon}} + \beta\right)

    In training mode :math:`\mu, v` are the batch statistics and the running statistics are
    updated as :math:`r \leftarrow (1 - m) r + m\,s` (``m`` = ``momentum``, the running variance
    uses the unbiased batch variance, as Lux). In test mode (``luxc.testmode(st)``) the running
    statistics are used and the state is returned unchanged.

    Parameters (``affine=True``): ``scale`` γ and ``bias`` β, shape ``(chs,)``. State:
    ``running_mean``, ``running_var`` (``(chs,)``, when ``track_stats``) and ``training``.
    """

    def __init__(
        self,
        chs: int,
        activation: Callable | None = None,
        *,
        epsilon: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_stats: bool = True,
        dtype: jnp.dtype = jnp.float32,
    ):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1]; received {momentum}")
        self.chs, self.activation, self.epsilon, self.momentum = chs, activation, epsilon, momentum
        self.affine, self.track_stats, self.dtype = affine, track_stats, dtype

    def init_parameters(self, key: jax.Array) -> dict:
        if not self.affine:
            return {}
        return {"scale": jnp.ones(self.chs, self.dtype), "bias": jnp.zeros(self.chs, self.dtype)}

    def init_states(self, key: jax.Array) -> dict:
        st: dict = {"training": Val(True)}
        if self.track_stats:
            st["running_mean"] = jnp.zeros(self.chs, self.dtype)
            st["running_var"] = jnp.ones(self.chs, self.dtype)
        return st

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_rank(x, 2, f"a (N, ..., {self.chs}) input")
        self._check_features(x, self.chs)
        x = match_eltype(self, ps, st, x)
        dtype, x = x.dtype, _statistics_dtype(x)
        axes = tuple(range(x.ndim - 1))
        training = bool(st["training"])
        if (training or not self.track_stats) and x.size == 0:
            # Batch statistics of no rows are NaN, and the running statistics would keep them
            # for good (Lux.jl computes them the same way, with no guard: LuxLib's
            # src/impl/normalization.jl, m = accum_size(x, reduce_dims)). The shape is static,
            # so refusing costs nothing per step.
            raise LayerShapeError(
                f"{self.summary()}: received an empty batch of shape {np.shape(x)}; batch "
                f"statistics need at least one row (drop empty batches, or use "
                f"luxc.testmode(st) to normalise with the running statistics)")
        if training or not self.track_stats:
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
        else:
            mean, var = st["running_mean"], st["running_var"]
        y = (x - mean) / jnp.sqrt(var + self.epsilon)
        if self.affine:
            y = y * ps["scale"] + ps["bias"]
        y = y if x.dtype == dtype else y.astype(dtype)
        if self.activation:
            y = self.activation(y)
        if training and self.track_stats:
            m = x.size // self.chs
            unbiased = var * (m / max(m - 1, 1))
            mom = self.momentum
            running = st["running_mean"].dtype
            st = {
                **st,
                "running_mean": ((1 - mom) * st["running_mean"]
                                 + mom * jax.lax.stop_gradient(mean)).astype(running),
                "running_var": ((1 - mom) * st["running_var"]
                                + mom * jax.lax.stop_gradient(unbiased)).astype(running),
            }
        return y, st

    def summary(self) -> str:
        act = activation_name(self.activation)
        return f"BatchNorm({self.chs}{', ' + act if act else ''})"


class LayerNorm(AbstractLayer):
    r"""Normalises each sample over its trailing ``len(shape)`` axes:
    :math:`y = \sigma(\gamma (x - \mu) / \sqrt{v + \epsilon} + \beta)`, with ``scale`` γ and
    ``bias`` β of shape ``shape``. Input ``(N, ..., *shape)``."""

    def __init__(
        self,
        shape: int | Sequence[int],
        activation: Callable | None = None,
        *,
        epsilon: float = 1e-5,
        affine: bool = True,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.activation, self.epsilon, self.affine, self.dtype = activation, epsilon, affine, dtype

    def init_parameters(self, key: jax.Array) -> dict:
        if not self.affine:
            return {}
        return {"scale": jnp.ones(self.shape, self.dtype), "bias": jnp.zeros(self.shape, self.dtype)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n = len(self.shape)
        if tuple(jnp.shape(x)[-n:]) != self.shape or jnp.ndim(x) < n:
            raise LayerShapeError(
                f"{self.summary()} expects an input of shape (..., {', '.join(map(str, self.shape))})"
                f"; received {jnp.shape(x)}"
            )
        x = match_eltype(self, ps, st, x)
        dtype, x = x.dtype, _statistics_dtype(x)
        axes = tuple(range(x.ndim - n, x.ndim))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        y = (x - mean) / jnp.sqrt(var + self.epsilon)
        if self.affine:
            y = y * ps["scale"] + ps["bias"]
        y = y if x.dtype == dtype else y.astype(dtype)
        return (self.activation(y) if self.activation else y), st

    def summary(self) -> str:
        return f"LayerNorm({self.shape if len(self.shape) > 1 else self.shape[0]})"
