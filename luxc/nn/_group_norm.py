"""GroupNorm and InstanceNorm: per-sample statistics over the spatial axes and a group of
channels (Lux's ``src/layers/normalize.jl``, LuxLib's ``groupnorm`` / ``instancenorm``).

Inputs are channels-last, ``(N, *spatial, C)``. Both compute their statistics in float32 for
a narrower input (bfloat16, float16) and return the input's dtype, as BatchNorm does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from luxc.nn import _draws
from luxc.nn._core import AbstractLayer, LayerShapeError
from luxc.nn._eltype import match_eltype
from luxc.nn._init import Initializer, activation_name, ones, zeros
from luxc.nn._normalize import _statistics_dtype, running_statistics, updated_statistics


def _positive(owner: str, name: str, v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int; received {v!r}")
    return v


def _affine_parameters(layer: AbstractLayer, key: jax.Array) -> dict:
    if not layer.affine:
        return {}
    ks, kb = _draws.split(key)
    return {"scale": layer.init_scale(ks, (layer.chs,), layer.dtype),
            "bias": layer.init_bias(kb, (layer.chs,), layer.dtype)}


def _normalize(x: jax.Array, mean: jax.Array, var: jax.Array, epsilon: float) -> jax.Array:
    return (x - mean) * jax.lax.rsqrt(var + epsilon)


def _finish(layer: AbstractLayer, y: jax.Array, ps: dict, dtype: jnp.dtype) -> jax.Array:
    if layer.affine:
        y = y * ps["scale"] + ps["bias"]
    y = y.astype(dtype)
    return layer.activation(y) if layer.activation else y


class GroupNorm(AbstractLayer):
    r"""Group normalisation: the ``chs`` channels are split into ``groups`` contiguous groups
    of ``chs // groups``; each sample is normalised over its spatial axes and the channels of
    one group,

    .. math::
        y = \sigma\left(\gamma \frac{x - \mu_{n,g}}{\sqrt{v_{n,g} + \epsilon}} + \beta\right)

    (biased variance). The same in training and test mode: no running statistics.

    Args:
        chs: channels, the last axis of ``x``.
        groups: number of groups; must divide ``chs``.
        activation: element-wise :math:`\sigma`; ``None`` is the identity.
        epsilon: added to the variance.
        affine: whether to learn ``scale`` γ and ``bias`` β.
        init_scale, init_bias: ``init(key, shape, dtype)``; Lux's ones and zeros by default.

    Parameters (``affine=True``): ``scale``, ``bias`` of shape ``(chs,)``. No state (Lux's
    printout says "plus 0 states"). Input ``(N, *spatial, chs)``, rank ≥ 2 (Lux's code and
    tests take ``(chs, N)`` matrices although its docstring asks for rank > 2).

    >>> import jax, jax.numpy as jnp, luxc
    >>> gn = luxc.nn.GroupNorm(4, 2)
    >>> ps, st = luxc.setup(jax.random.key(0), gn)
    >>> y, _ = gn(jnp.array([[1.0, 3.0, 10.0, 10.0]]), ps, st)
    >>> [round(float(v), 3) for v in y[0]]
    [-1.0, 1.0, 0.0, 0.0]
    """

    def __init__(
        self,
        chs: int,
        groups: int,
        activation: Callable | None = None,
        *,
        epsilon: float = 1e-5,
        affine: bool = True,
        init_scale: Initializer | None = None,
        init_bias: Initializer | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.chs = _positive("GroupNorm", "chs", chs)
        self.groups = _positive("GroupNorm", "groups", groups)
        if chs % groups:
            divisors = [d for d in range(1, chs + 1) if chs % d == 0]
            raise ValueError(f"GroupNorm: groups must divide chs; received GroupNorm({chs}, "
                             f"{groups}) — use groups in {divisors}")
        self.activation, self.epsilon, self.affine, self.dtype = activation, epsilon, affine, dtype
        self.init_scale, self.init_bias = init_scale or ones, init_bias or zeros

    def init_parameters(self, key: jax.Array) -> dict:
        return _affine_parameters(self, key)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_rank(x, 2, f"a (N, ..., {self.chs}) input")
        self._check_features(x, self.chs)
        x = match_eltype(self, ps, st, x)
        dtype, xw = x.dtype, _statistics_dtype(x)
        grouped = xw.reshape(*x.shape[:-1], self.groups, self.chs // self.groups)
        axes = (*range(1, x.ndim - 1), x.ndim)  # spatial axes and the channels of a group
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        y = _normalize(grouped, mean, var, self.epsilon).reshape(x.shape)
        return _finish(self, y, ps, dtype), st

    def summary(self) -> str:
        act = activation_name(self.activation)
        return f"GroupNorm({self.chs}, {self.groups}{', ' + act if act else ''}, affine={self.affine})"


class InstanceNorm(AbstractLayer):
    r"""Instance normalisation: each sample and channel normalised over the spatial axes,
    :math:`y = \sigma(\gamma (x - \mu_{n,c}) / \sqrt{v_{n,c} + \epsilon} + \beta)`.

    With ``track_stats=True`` the training mode also updates running statistics, as LuxLib:
    :math:`r_\mu \leftarrow (1-m) r_\mu + m\,\bar\mu`,
    :math:`r_v \leftarrow (1-m) r_v + m\,\frac{S}{S-1}\bar v` (``m`` = ``momentum``,
    :math:`\bar\mu, \bar v` the instance statistics averaged over the batch, ``S`` the number
    of spatial positions); the test mode (``luxc.testmode(st)``) then normalises with them.
    Without ``track_stats`` both modes use the instance statistics.

    Args:
        chs: channels, the last axis of ``x``.
        activation: element-wise :math:`\sigma`; ``None`` is the identity.
        epsilon, momentum: as above.
        affine: whether to learn ``scale`` and ``bias`` (Lux's default: ``False``).
        track_stats: keep running statistics (Lux's default: ``False``).
        init_scale, init_bias: ``init(key, shape, dtype)``; ones and zeros by default.

    Parameters (``affine=True``): ``scale``, ``bias`` of shape ``(chs,)``. State:
    ``training`` and, with ``track_stats``, ``running_mean`` (zeros), ``running_var`` (ones),
    shape ``(chs,)``. Input ``(N, *spatial, chs)`` with at least one spatial axis.
    """

    def __init__(
        self,
        chs: int,
        activation: Callable | None = None,
        *,
        epsilon: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_stats: bool = False,
        init_scale: Initializer | None = None,
        init_bias: Initializer | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.chs = _positive("InstanceNorm", "chs", chs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"InstanceNorm: momentum must be in [0, 1]; received {momentum}")
        self.activation, self.epsilon, self.momentum = activation, epsilon, momentum
        self.affine, self.track_stats, self.dtype = affine, track_stats, dtype
        self.init_scale, self.init_bias = init_scale or ones, init_bias or zeros

    def init_parameters(self, key: jax.Array) -> dict:
        return _affine_parameters(self, key)

    def init_states(self, key: jax.Array) -> dict:
        return running_statistics(self.chs, self.track_stats, self.dtype)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_rank(x, 3, f"a (N, *spatial, {self.chs}) input with a spatial axis")
        self._check_features(x, self.chs)
        if x.size == 0:
            raise LayerShapeError(f"{self.summary()}: received an empty input of shape "
                                  f"{x.shape}; instance statistics need at least one value")
        x = match_eltype(self, ps, st, x)
        dtype, xw = x.dtype, _statistics_dtype(x)
        training = bool(st["training"])
        axes = tuple(range(1, x.ndim - 1))
        if self.track_stats and not training:
            mean, var = st["running_mean"], st["running_var"]
        else:
            mean = jnp.mean(xw, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(xw - mean), axis=axes, keepdims=True)
        y = _finish(self, _normalize(xw, mean, var, self.epsilon), ps, dtype)
        if self.track_stats and training:
            # Instance statistics averaged over the batch, each of S = prod(spatial) values.
            batch_mean, batch_var = (jnp.mean(s.reshape(-1, self.chs), axis=0) for s in (mean, var))
            st = updated_statistics(st, batch_mean, batch_var, xw.size // (x.shape[0] * self.chs),
                                    self.momentum)
        return y, st

    def summary(self) -> str:
        act = activation_name(self.activation)
        return (f"InstanceNorm({self.chs}{', ' + act if act else ''}, affine={self.affine}, "
                f"track_stats={self.track_stats})")
