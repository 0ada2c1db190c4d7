"""The 15 loss functions of Lux.jl, in both of Lux's call forms.

``loss(y_pred, y)`` → the aggregated loss; ``loss(model, ps, st, (x, y))`` → ``(loss, st, {})``,
an objective function for the training API. Arrays are batch-first; the class axis of the
classification losses is ``dims=-1`` (the last axis), Lux's ``dims=1`` in Julia's layout.

Gradients flow to the prediction only (the target is wrapped in ``stop_gradient``). Integer and
boolean targets are converted to the prediction's floating dtype; float16/bfloat16 predictions
give a result in their own dtype. ``epsilon=None`` means ``eps`` of that dtype, as in Lux.

``agg`` is ``"mean"`` (default), ``"sum"``, ``None`` (the element-wise or per-sample losses)
or a callable. Julia's ``sum(x)`` reduces the whole array, Python's iterates over the first
axis: Python's ``sum``/``max``/``min``, ``statistics.mean``/``fmean``/``median``,
``math.prod`` and NumPy's ``sum``/``mean``/``max``/``min``/``median``/``prod`` are replaced by
whole-array ``jax.numpy`` reductions; any other callable receives the array as is. With
``agg=None`` the losses reduced over ``dims`` have shape ``(batch,)`` (Lux keeps a size-1 axis,
which would silently broadcast against ``(batch,)`` weights). A 0-d target is broadcast to the
prediction's shape, as in Lux's tests; any other shape difference is an error.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._stability import check_output, enabled
from luxc.ops import xlogx, xlogy

Agg = str | Callable[[jax.Array], jax.Array] | None


_WHOLE_ARRAY: dict[Any, Callable[[jax.Array], jax.Array]] = {
    "mean": jnp.mean, "sum": jnp.sum, sum: jnp.sum, max: jnp.max, min: jnp.min, math.prod: jnp.prod,
    statistics.mean: jnp.mean, statistics.fmean: jnp.mean, statistics.median: jnp.median,
    np.sum: jnp.sum, np.mean: jnp.mean, np.max: jnp.max, np.min: jnp.min, np.median: jnp.median,
    np.prod: jnp.prod}


def _aggregate(agg: Agg, x: jax.Array) -> jax.Array:
    if agg is None:
        return x
    return _WHOLE_ARRAY.get(agg, agg)(x)  # type: ignore[arg-type]


def _check_agg(agg: Agg, loss: str) -> None:
    if not (agg in ("mean", "sum") or agg is None or callable(agg)):
        raise ValueError(f"{loss}: agg must be 'mean', 'sum', None or a callable; received {agg!r}")


def _float_dtype(*xs: Any) -> jnp.dtype:
    dt = jnp.result_type(*xs)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.dtype(jnp.float32)


class AbstractLoss:
    """Both of Lux's call forms on top of ``compute(y_pred, y)``."""

    check_shapes = True

    def compute(self, y_pred: jax.Array, y: jax.Array) -> jax.Array:
        raise TypeError(f"{type(self).__name__} does not define compute")

    def __call__(self, *args: Any):
        if len(args) == 2:
            return self._loss(*args)
        if len(args) == 4:
            model, ps, st, data = args
            try:
                x, y = data
            except (TypeError, ValueError):
                raise TypeError(f"{type(self).__name__}: as an objective, data must be (x, y); "
                                f"received {type(data).__name__}") from None
            y_pred, st = model(x, ps, st)
            return self._loss(y_pred, y), st, {}
        raise TypeError(f"{type(self).__name__} takes (y_pred, y) or (model, ps, st, (x, y)); "
                        f"received {len(args)} arguments")

    def _loss(self, y_pred: Any, y: Any) -> jax.Array:
        dtype = _float_dtype(y_pred)
        y_pred = jnp.asarray(y_pred, dtype)
        labels = jnp.issubdtype(jnp.result_type(y), jnp.integer)
        y = jax.lax.stop_gradient(jnp.asarray(y, dtype))
        if y.ndim == 0:
            y = jnp.broadcast_to(y, y_pred.shape)
        if self.check_shapes and y_pred.shape != y.shape:
            hint = ""
            if labels and y.shape == y_pred.shape[:-1]:
                hint = (f"; are these integer class labels? One-hot them first: "
                        f"jax.nn.one_hot(y, {y_pred.shape[-1]})")
            raise ValueError(f"{type(self).__name__}: prediction shape {y_pred.shape} and target "
                             f"shape {y.shape} differ{hint}")
        out = self.compute(y_pred, y)
        if enabled("luxlib"):
            check_output("luxlib", type(self).__name__, y_pred.dtype, out)
        return out

    def _eps(self, dtype: jnp.dtype) -> Any:
        eps = getattr(self, "epsilon", None)
        return jnp.finfo(dtype).eps if eps is None else jnp.asarray(eps, dtype)

    def __post_init__(self) -> None:
        _check_agg(self.agg, type(self).__name__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class GenericLossFunction(AbstractLoss):
    r"""``agg(loss_fn(ŷ, y))`` for a ``loss_fn`` of two numbers, applied element-wise.

    As in Lux, ``loss_fn`` maps two numbers to a number. If it is array-aware (called on the
    arrays it returns an array of their shape, e.g. ``lambda yp, y: (yp - y) ** 2``) it is
    called once on the arrays; otherwise (it fails on arrays, or reduces them, e.g.
    ``lambda yp, y: jnp.linalg.norm(jnp.stack([yp, y]))`` or one using ``lax.cond``) it is
    applied to each pair of elements with ``jnp.vectorize``. Python ``if``/``max`` on the
    values cannot be traced by JAX in either case: use ``jnp.where``/``jnp.maximum``.

    >>> mse = GenericLossFunction(lambda yp, y: (yp - y) ** 2)
    >>> round(float(mse(jnp.array([1.1, 1.9, 3.1]), jnp.array([1, 2, 3]))), 4)
    0.01
    """

    loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    agg: Agg = "mean"

    def compute(self, y_pred, y):
        return _aggregate(self.agg, self._elementwise(y_pred, y))

    def _elementwise(self, y_pred: jax.Array, y: jax.Array) -> jax.Array:
        try:
            aware = jax.eval_shape(self.loss_fn, y_pred, y).shape == y_pred.shape
        except (TypeError, ValueError, AttributeError):
            aware = False
        if aware:
            return self.loss_fn(y_pred, y)
        try:
            return jnp.vectorize(self.loss_fn)(y_pred, y)
        except jax.errors.ConcretizationTypeError:
            raise TypeError(
                "GenericLossFunction: loss_fn is applied element-wise (jnp.vectorize) but uses "
                "Python control flow (if, max, min) on a traced value, which JAX cannot trace; "
                "write it with jnp.where / jnp.maximum / lax.cond"
            ) from None


@dataclass(frozen=True)
class MSELoss(AbstractLoss):
    r"""Mean squared error, :math:`\mathrm{agg}((\hat y - y)^2)`."""

    agg: Agg = "mean"

    def compute(self, y_pred, y):
        return _aggregate(self.agg, jnp.square(y_pred - y))


@dataclass(frozen=True)
class MAELoss(AbstractLoss):
    r"""Mean absolute error, :math:`\mathrm{agg}(|\hat y - y|)`."""

    agg: Agg = "mean"

    def compute(self, y_pred, y):
        d = y_pred - y
        # sign(d) * d == |d|, and its derivative is sign(d): 0 at ŷ == y, as Lux's
        # derivative(l1_distance_loss) (jnp.abs has derivative 1 there).
        return _aggregate(self.agg, jnp.sign(d) * d)


@dataclass(frozen=True)
class MSLELoss(AbstractLoss):
    r"""Mean squared logarithmic error,
    :math:`\mathrm{agg}((\log(\hat y + \epsilon) - \log(y + \epsilon))^2)`."""

    agg: Agg = "mean"
    epsilon: float | None = None

    def compute(self, y_pred, y):
        eps = self._eps(y_pred.dtype)
        return _aggregate(self.agg, jnp.square(jnp.log(y_pred + eps) - jnp.log(y + eps)))


@dataclass(frozen=True)
class HuberLoss(AbstractLoss):
    r"""Huber loss: :math:`\tfrac12 d^2` if :math:`|d| \le \delta`, else
    :math:`\delta(|d| - \tfrac12\delta)`, with :math:`d = \hat y - y`."""

    delta: float = 1.0
    agg: Agg = "mean"

    def compute(self, y_pred, y):
        d = jnp.abs(y_pred - y)
        delta = jnp.asarray(self.delta, y_pred.dtype)
        quad = 0.5 * jnp.square(d)
        lin = delta * (d - 0.5 * delta)
        return _aggregate(self.agg, jnp.where(d <= delta, quad, lin))


@dataclass(frozen=True)
class HingeLoss(AbstractLoss):
    r""":math:`\mathrm{agg}(\max(0, 1 - y\hat y))`, labels ``y`` in {-1, 1}."""

    agg: Agg = "mean"

    def compute(self, y_pred, y):
        return _aggregate(self.agg, jax.nn.relu(1 - y * y_pred))


@dataclass(frozen=True)
class SquaredHingeLoss(AbstractLoss):
    r""":math:`\mathrm{agg}(\max(0, 1 - y\hat y)^2)`, labels ``y`` in {-1, 1}."""

    agg: Agg = "mean"

    def compute(self, y_pred, y):
        return _aggregate(self.agg, jnp.square(jax.nn.relu(1 - y * y_pred)))


@dataclass(frozen=True)
class PoissonLoss(AbstractLoss):
    r""":math:`\mathrm{agg}(\hat y - y \log(\hat y + \epsilon))`."""

    agg: Agg = "mean"
    epsilon: float | None = None

    def compute(self, y_pred, y):
        return _aggregate(self.agg, y_pred - xlogy(y, y_pred + self._eps(y_pred.dtype)))


@dataclass(frozen=True)
class SiameseContrastiveLoss(AbstractLoss):
    r"""Contrastive loss for Siamese networks,
    :math:`\mathrm{agg}((1 - y)\hat y^2 + y \max(0, m - \hat y)^2)`, ``m`` = ``margin``."""

    margin: float = 1.0
    agg: Agg = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.margin < 0:
            raise ValueError(f"SiameseContrastiveLoss: margin must be non-negative; "
                             f"received {self.margin}")

    def compute(self, y_pred, y):
        m = jnp.asarray(self.margin, y_pred.dtype)
        return _aggregate(self.agg, (1 - y) * jnp.square(y_pred)
                          + y * jnp.square(jnp.maximum(0, m - y_pred)))


def _check_smoothing(alpha: float | None, loss: str) -> None:
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{loss}: label_smoothing must be in [0, 1]; received {alpha}")


@dataclass(frozen=True)
class BinaryCrossEntropyLoss(AbstractLoss):
    r"""Binary cross-entropy.

    * ``logits=False``: :math:`\mathrm{agg}(-\tilde y\log(\hat y+\epsilon)
      - (1-\tilde y)\log(1-\hat y+\epsilon))`, ``ŷ`` probabilities;
    * ``logits=True``: :math:`\mathrm{agg}((1-\tilde y)\hat y - \log\sigma(\hat y))`, computed
      with a stable log-sigmoid (finite for logits of ±1e4).

    Label smoothing: :math:`\tilde y = (1-\alpha)y + \alpha/2`.
    """

    agg: Agg = "mean"
    epsilon: float | None = None
    label_smoothing: float | None = None
    logits: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_smoothing(self.label_smoothing, "BinaryCrossEntropyLoss")

    def compute(self, y_pred, y):
        if self.label_smoothing is not None:
            a = self.label_smoothing
            y = y * (1 - a) + a * 0.5
        if self.logits:
            return _aggregate(self.agg, (1 - y) * y_pred - jax.nn.log_sigmoid(y_pred))
        eps = self._eps(y_pred.dtype)
        return _aggregate(self.agg, -xlogy(y, y_pred + eps) - xlogy(1 - y, 1 - y_pred + eps))


@dataclass(frozen=True)
class BinaryFocalLoss(AbstractLoss):
    r"""Binary focal loss (Lin et al., 2017): with :math:`p_t = y(\hat y+\epsilon) +
    (1-y)(1-\hat y-\epsilon)`, :math:`\mathrm{agg}(-(1-p_t)^\gamma \log p_t)`. ``ŷ`` are
    probabilities; ``gamma=0`` is the binary cross-entropy."""

    gamma: float = 2.0
    agg: Agg = "mean"
    epsilon: float | None = None

    def compute(self, y_pred, y):
        p = y_pred + self._eps(y_pred.dtype)
        p_t = y * p + (1 - y) * (1 - p)
        return _aggregate(self.agg, -jnp.power(1 - p_t, self.gamma) * jnp.log(p_t))


@dataclass(frozen=True)
class CrossEntropyLoss(AbstractLoss):
    r"""Cross-entropy over the class axis ``dims`` (default: the last):
    :math:`\mathrm{agg}(-\sum_{dims}\tilde y\log(\hat y+\epsilon))`; with ``logits=True``
    :math:`\mathrm{agg}(-\sum_{dims}\tilde y\,\mathrm{logsoftmax}(\hat y))` (stable).

    Label smoothing: :math:`\tilde y = (1-\alpha)y + \alpha/K`, ``K`` = size of the class axis
    (the product of the sizes for a tuple ``dims``).
    ``y`` is one-hot, shaped like ``ŷ``: ``(batch, classes)``.
    """

    agg: Agg = "mean"
    epsilon: float | None = None
    dims: int | tuple[int, ...] = -1
    logits: bool = False
    label_smoothing: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_smoothing(self.label_smoothing, "CrossEntropyLoss")

    def compute(self, y_pred, y):
        if self.label_smoothing is not None:
            a = self.label_smoothing
            axes = (self.dims,) if isinstance(self.dims, int) else tuple(self.dims)
            y = y * (1 - a) + a / math.prod(y.shape[d] for d in axes)
        if self.logits:
            terms = y * jax.nn.log_softmax(y_pred, axis=self.dims)
        else:
            terms = xlogy(y, y_pred + self._eps(y_pred.dtype))
        return _aggregate(self.agg, -jnp.sum(terms, axis=self.dims))


@dataclass(frozen=True)
class FocalLoss(AbstractLoss):
    r"""Focal loss (Lin et al., 2017) over the class axis ``dims``:
    :math:`\mathrm{agg}(-\sum_{dims} y (1-\hat y_\epsilon)^\gamma \log \hat y_\epsilon)`,
    :math:`\hat y_\epsilon = \hat y + \epsilon`; ``ŷ`` softmax outputs. ``gamma=0`` is the
    cross-entropy."""

    gamma: float = 2.0
    dims: int | tuple[int, ...] = -1
    agg: Agg = "mean"
    epsilon: float | None = None

    def compute(self, y_pred, y):
        p = y_pred + self._eps(y_pred.dtype)
        terms = y * jnp.power(1 - p, self.gamma) * jnp.log(p)
        return _aggregate(self.agg, -jnp.sum(terms, axis=self.dims))


@dataclass(frozen=True)
class KLDivergenceLoss(AbstractLoss):
    r"""Kullback–Leibler divergence :math:`\mathrm{KL}(y \| \hat y)` over the class axis:
    the cross-entropy of ``ŷ`` against ``y`` (see :class:`CrossEntropyLoss` for ``epsilon``
    and ``label_smoothing``) minus the entropy :math:`\mathrm{agg}(\sum_{dims} y\log y)`."""

    dims: int | tuple[int, ...] = -1
    agg: Agg = "mean"
    epsilon: float | None = None
    label_smoothing: float | None = None

    def compute(self, y_pred, y):
        ce = CrossEntropyLoss(agg=self.agg, epsilon=self.epsilon, dims=self.dims,
                              label_smoothing=self.label_smoothing).compute(y_pred, y)
        entropy = _aggregate(self.agg, jnp.sum(xlogx(y), axis=self.dims))
        return ce + entropy


@dataclass(frozen=True)
class DiceCoeffLoss(AbstractLoss):
    r"""Dice loss (Milletari et al., 2016), per sample over every non-batch axis:

    .. math:: \mathrm{agg}\left(1 - \frac{2\sum y\hat y + \alpha}{\sum y^2 + \sum\hat y^2
              + \alpha}\right)

    ``α`` = ``smooth``. A 1-d input is one sample.
    """

    smooth: float = 1.0
    agg: Agg = "mean"

    def compute(self, y_pred, y):
        axes = None if y_pred.ndim == 1 else tuple(range(1, y_pred.ndim))
        a = jnp.asarray(self.smooth, y_pred.dtype)
        num = 2 * jnp.sum(y * y_pred, axis=axes) + a
        den = jnp.sum(jnp.square(y_pred), axis=axes) + jnp.sum(jnp.square(y), axis=axes) + a
        return _aggregate(self.agg, 1 - num / den)


L1Loss, L2Loss = MAELoss, MSELoss  # Lux's aliases (losses.jl: const L1Loss = MAELoss, ...)

ALL = (GenericLossFunction, BinaryCrossEntropyLoss, BinaryFocalLoss, CrossEntropyLoss,
       DiceCoeffLoss, FocalLoss, HingeLoss, HuberLoss, KLDivergenceLoss, MAELoss, MSELoss,
       MSLELoss, PoissonLoss, SiameseContrastiveLoss, SquaredHingeLoss)
