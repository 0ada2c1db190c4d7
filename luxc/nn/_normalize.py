"""BatchNorm, LayerNorm and RMSNorm (Lux's ``src/layers/normalize.jl``); the feature axis is
the last one. GroupNorm and InstanceNorm are in ``_group_norm``, WeightNorm in ``_weight_norm``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._batch_statistics import batch_normalise
from luxc.nn._core import AbstractLayer, LayerShapeError, Val
from luxc.nn._eltype import match_eltype
from luxc.nn._init import activation_name


def _statistics_dtype(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is a narrower float (bfloat16, float16): the mean and variance
    of a normalisation are accumulated and applied in float32, and the result is cast back
    to ``x``'s dtype (mixed precision keeps statistics in float32, as torch's autocast)."""
    narrow = jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize < 4
    return x.astype(jnp.float32) if narrow else x


def running_statistics(chs: int, track_stats: bool, dtype: jnp.dtype) -> dict:
    """The state of BatchNorm and InstanceNorm: ``training``, and with ``track_stats`` the
    ``running_mean`` (zeros) and ``running_var`` (ones) of shape ``(chs,)``, as Lux."""
    st: dict = {"training": Val(True)}
    if track_stats:
        st["running_mean"] = jnp.zeros(chs, dtype)
        st["running_var"] = jnp.ones(chs, dtype)
    return st


def updated_statistics(st: dict, mean: jax.Array, var: jax.Array, m: int,
                       momentum: float) -> dict:
    r"""``st`` with :math:`r \leftarrow (1 - \mathrm{momentum})\,r + \mathrm{momentum}\,s`
    for the mean and for the unbiased variance ``var · m/(m-1)`` of ``m`` values (LuxLib's
    ``update_normalization_statistics``); no gradient flows into the state."""
    unbiased = var * (m / max(m - 1, 1))
    dt = st["running_mean"].dtype

    def new(r: jax.Array, s: jax.Array) -> jax.Array:
        return ((1 - momentum) * r + momentum * jax.lax.stop_gradient(s)).astype(dt)

    return {**st, "running_mean": new(st["running_mean"], mean),
            "running_var": new(st["running_var"], unbiased)}


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
        return running_statistics(self.chs, self.track_stats, self.dtype)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_rank(x, 2, f"a (N, ..., {self.chs}) input")
        self._check_features(x, self.chs)
        x = match_eltype(self, ps, st, x)
        dtype, x = x.dtype, _statistics_dtype(x)
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
            scale, bias = ((ps["scale"], ps["bias"]) if self.affine else
                           (jnp.ones(self.chs, x.dtype), jnp.zeros(self.chs, x.dtype)))
            y, mean, var = batch_normalise(x, scale, bias, self.epsilon)
        else:
            mean, var = st["running_mean"], st["running_var"]
            y = (x - mean) / jnp.sqrt(var + self.epsilon)
            if self.affine:
                y = y * ps["scale"] + ps["bias"]
        y = y if x.dtype == dtype else y.astype(dtype)
        if self.activation:
            y = self.activation(y)
        if training and self.track_stats:
            st = updated_statistics(st, mean, var, x.size // self.chs, self.momentum)
        return y, st

    def summary(self) -> str:
        act = activation_name(self.activation)
        return f"BatchNorm({self.chs}{', ' + act if act else ''})"


def _shape_tuple(owner: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    t = (shape,) if isinstance(shape, int) else tuple(shape)
    if not t or not all(isinstance(d, int) and d > 0 for d in t):
        raise ValueError(f"{owner}: shape must be a positive int or a tuple of positive ints; "
                         f"received {shape!r}")
    return t


def _check_trailing(layer: AbstractLayer, x: jax.Array, shape: tuple[int, ...]) -> None:
    """``x``'s trailing axes must match ``shape`` (an entry 1 broadcasts, as in Lux)."""
    got = tuple(np.shape(x))
    n = len(shape)
    if len(got) < n or any(s not in (1, g) for s, g in zip(shape, got[len(got) - n:])):
        raise LayerShapeError(
            f"{layer.summary()} expects an input of shape (..., {', '.join(map(str, shape))})"
            f"; received {got}")


_DIMS_FORMS = "'sample', 'all', an axis or a tuple of axes"


def _layernorm_dims(dims: str | int | Sequence[int]) -> str | tuple[int, ...]:
    if dims in ("sample", "all"):
        return dims
    t = (dims,) if isinstance(dims, int) else dims
    if isinstance(t, tuple | list) and t and all(isinstance(d, int) for d in t):
        return tuple(t)
    raise ValueError(f"LayerNorm: dims must be {_DIMS_FORMS}; received {dims!r}")


class LayerNorm(AbstractLayer):
    r"""Layer normalisation (Lux's ``LayerNorm``):
    :math:`y = \sigma(\gamma (x - \mu) / \sqrt{v + \epsilon} + \beta)`, :math:`\mu, v` the
    mean and (biased) variance of ``x`` over the axes ``dims``.

    Args:
        shape: shape of ``scale`` γ and ``bias`` β, aligned with the trailing axes of ``x``
            (an entry 1 broadcasts, e.g. ``(1, 1, C)`` on ``(N, H, W, C)``).
        activation: element-wise :math:`\sigma`; ``None`` is the identity.
        epsilon: added to the variance.
        dims: the axes the statistics are taken over. ``"sample"`` (default): each sample's
            trailing ``len(shape)`` axes, so samples never mix (the transformer LayerNorm).
            ``"all"``: every axis, the batch included — Lux's default ``dims=Colon()``.
            An int or a tuple of ints: those axes of ``x`` (batch-first, negative allowed;
            Lux's ``dims=d`` on an array of rank ``r`` is axis ``r - d`` here).
        affine: whether to learn γ and β.

    Parameters (``affine=True``): ``scale`` (ones) and ``bias`` (zeros), shape ``shape``.
    Input ``(N, ..., *shape)`` → output of the same shape. No state.

    >>> import jax, jax.numpy as jnp, luxc
    >>> ln = luxc.nn.LayerNorm(3)
    >>> ps, st = luxc.setup(jax.random.key(0), ln)
    >>> y, _ = ln(jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]), ps, st)
    >>> [round(float(v), 3) for v in y[0]]
    [-1.225, 0.0, 1.225]
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        activation: Callable | None = None,
        *,
        epsilon: float = 1e-5,
        dims: str | int | Sequence[int] = "sample",
        affine: bool = True,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.shape = _shape_tuple("LayerNorm", shape)
        self.dims = _layernorm_dims(dims)
        self.activation, self.epsilon, self.affine, self.dtype = activation, epsilon, affine, dtype

    def init_parameters(self, key: jax.Array) -> dict:
        if not self.affine:
            return {}
        return {"scale": jnp.ones(self.shape, self.dtype), "bias": jnp.zeros(self.shape, self.dtype)}

    def _axes(self, ndim: int) -> tuple[int, ...]:
        if self.dims == "sample":
            return tuple(range(ndim - len(self.shape), ndim))
        if self.dims == "all":
            return tuple(range(ndim))
        if not all(-ndim <= d < ndim for d in self.dims):
            raise LayerShapeError(f"{self.summary()}: dims {self.dims} are not axes of an "
                                  f"input of rank {ndim}")
        return tuple(sorted(d % ndim for d in self.dims))

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        _check_trailing(self, x, self.shape)
        x = match_eltype(self, ps, st, x)
        dtype, x = x.dtype, _statistics_dtype(x)
        axes = self._axes(x.ndim)
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        y = (x - mean) / jnp.sqrt(var + self.epsilon)
        if self.affine:
            y = y * ps["scale"] + ps["bias"]
        y = y if x.dtype == dtype else y.astype(dtype)
        return (self.activation(y) if self.activation else y), st

    def summary(self) -> str:
        act = activation_name(self.activation)
        extra = ("" if self.affine else ", affine=False") + (
            "" if self.dims == "sample" else f", dims={self.dims!r}")
        shape = self.shape if len(self.shape) > 1 else self.shape[0]
        return f"LayerNorm({shape}{', ' + act if act else ''}{extra})"


class RMSNorm(AbstractLayer):
    r"""Root-mean-square normalisation (Lux's ``RMSNorm``) over each sample's trailing
    ``len(shape)`` axes :math:`A`:

    .. math::
        y = \frac{x}{\sqrt{\epsilon + \frac{1}{D}\sum_{j \in A} x_j^2}} \, \gamma,
        \qquad D = \prod \mathrm{shape}

    Args:
        *shape: the normalised shape, as ints or one tuple: ``RMSNorm(64)``,
            ``RMSNorm(2, 2)``, ``RMSNorm((2, 2))``. In batch-first order: Lux's
            ``RMSNorm((a, b))`` on ``(a, b, N)`` is ``RMSNorm(b, a)`` on ``(N, b, a)``.
        epsilon: added to the mean square.
        affine: whether to learn ``scale`` γ.

    Parameters (``affine=True``): ``scale`` of shape ``shape``, ones (Lux's ``ones32``).
    No state. The mean square is taken in float32 for a narrower input.

    >>> import jax, jax.numpy as jnp, luxc
    >>> norm = luxc.nn.RMSNorm(2, epsilon=0.0)
    >>> ps, st = luxc.setup(jax.random.key(0), norm)
    >>> [round(float(v), 4) for v in norm(jnp.array([[3.0, 4.0]]), ps, st)[0][0]]
    [0.8485, 1.1314]
    """

    def __init__(self, *shape: int | Sequence[int], epsilon: float = 1e-5, affine: bool = True,
                 dtype: jnp.dtype = jnp.float32):
        one = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        self.shape = _shape_tuple("RMSNorm", one)
        self.epsilon, self.affine, self.dtype = epsilon, affine, dtype

    def init_parameters(self, key: jax.Array) -> dict:
        return {"scale": jnp.ones(self.shape, self.dtype)} if self.affine else {}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        # No match_eltype, as Lux: the input's dtype often differs from the scale's on purpose.
        _check_trailing(self, x, self.shape)
        xw = _statistics_dtype(x)
        axes = tuple(range(x.ndim - len(self.shape), x.ndim))
        mean_sq = jnp.mean(jnp.square(xw), axis=axes, keepdims=True)
        y = (xw * jax.lax.rsqrt(mean_sq + self.epsilon)).astype(x.dtype)
        return (y * ps["scale"] if self.affine else y), st

    def summary(self) -> str:
        return f"RMSNorm({self.shape}{'' if self.affine else ', affine=False'})"
