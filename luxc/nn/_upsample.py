"""``Upsample`` (nearest / multilinear) and ``PixelShuffle``, channels-last ``(N, *spatial, C)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._core import AbstractLayer, LayerShapeError

Mode = Literal["nearest", "bilinear", "trilinear"]
_MODES = ("nearest", "bilinear", "trilinear")


def _positive_ints(v: int | Sequence[int], what: str) -> tuple[int, ...]:
    t = (v,) if isinstance(v, int) else tuple(v)
    if not t or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in t):
        raise ValueError(f"Upsample: {what} must be a positive int or a tuple of them; received {v!r}")
    return t


def linear_taps(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""For each output position ``j``: the two input positions it interpolates between and the
    weight of the second. The source coordinate is :math:`j (n_{in} - 1)/(n_{out} - 1)` with
    ``align_corners`` (the corner samples kept), else :math:`\max(0, (j + 1/2)\, n_{in}/n_{out}
    - 1/2)` (half-pixel centres, PyTorch's ``align_corners=False``)."""
    j = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = j * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((j + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


class Upsample(AbstractLayer):
    r"""Upsampling of the spatial axes of ``(N, *spatial, C)``, Lux's ``Upsample``.

    ``mode="nearest"`` repeats each element ``scale`` times per axis (integer factors only);
    ``"bilinear"`` / ``"trilinear"`` interpolate linearly along each spatial axis (meant for 2
    and 3 spatial axes; any number is accepted). Give exactly one of ``scale`` (an int for every
    spatial axis, or one per axis) and ``size`` (the output's spatial shape).
    ``align_corners`` (linear modes): ``True`` maps the corner samples onto each other,
    ``False`` (the default, as Lux's docstring) uses half-pixel centres — see
    :func:`linear_taps`.

    >>> import jax.numpy as jnp, luxc
    >>> x = jnp.array([0.0, 1.0]).reshape(1, 2, 1)
    >>> luxc.nn.Upsample("bilinear", scale=2)(x, {}, {})[0][0, :, 0].tolist()
    [0.0, 0.25, 0.75, 1.0]
    >>> y = luxc.nn.Upsample("bilinear", scale=2, align_corners=True)(x, {}, {})[0]
    >>> [round(v, 4) for v in y[0, :, 0].tolist()]
    [0.0, 0.3333, 0.6667, 1.0]
    """

    def __init__(self, mode: Mode = "nearest", *, scale: int | Sequence[int] | None = None,
                 size: int | Sequence[int] | None = None, align_corners: bool = False):
        if mode not in _MODES:
            raise ValueError(f"Upsample: mode must be one of {_MODES}; received {mode!r}")
        if (scale is None) == (size is None):
            raise ValueError("Upsample: give exactly one of scale= and size=; received "
                             f"scale={scale!r}, size={size!r}")
        self.mode, self.align_corners = mode, bool(align_corners)
        self.scale = None if scale is None else _positive_ints(scale, "scale")
        self.size = None if size is None else _positive_ints(size, "size")

    def output_size(self, in_size: Sequence[int]) -> tuple[int, ...]:
        """The spatial output size for spatial input size ``in_size``."""
        given = self.size if self.size is not None else self.scale
        if len(given) not in (1, len(in_size)) or (self.size is not None and len(given) != len(in_size)):
            raise LayerShapeError(f"{self.summary()} has {len(given)} entries for an input "
                                  f"with {len(in_size)} spatial axes {tuple(in_size)}")
        if self.size is not None:
            return self.size
        scale = self.scale * len(in_size) if len(self.scale) == 1 else self.scale
        return tuple(n * s for n, s in zip(in_size, scale))

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_rank(x, 3, "a (N, *spatial, C) input with at least one spatial axis")
        in_size = tuple(jnp.shape(x)[1:-1])
        out_size = self.output_size(in_size)
        for axis, (n_in, n_out) in enumerate(zip(in_size, out_size), start=1):
            if self.mode == "nearest":
                if n_out % n_in:
                    raise LayerShapeError(
                        f"{self.summary()}: nearest upsampling needs integer factors; axis {axis} "
                        f"goes from {n_in} to {n_out} (use a size that is a multiple of it)")
                x = jnp.repeat(x, n_out // n_in, axis=axis)
            else:
                lo, hi, t = linear_taps(n_in, n_out, self.align_corners)
                shape = [1] * jnp.ndim(x)
                shape[axis] = n_out
                t = jnp.asarray(t.reshape(shape), x.dtype)
                x = jnp.take(x, lo, axis=axis) * (1 - t) + jnp.take(x, hi, axis=axis) * t
        return x, st

    def summary(self) -> str:
        given = f", scale={self.scale}" if self.scale is not None else f", size={self.size}"
        return (f"Upsample({self.mode!r}{given}"
                f"{', align_corners=true' if self.align_corners else ''})")


class PixelShuffle(AbstractLayer):
    r"""Lux's (NNlib's) ``pixel_shuffle``: ``(N, *spatial, r^D·C)`` → ``(N, *(r·spatial), C)``
    with ``D`` spatial axes,

    .. math::
        y[n, r h + i, r w + j, c] = x[n, h, w, c\, r^2 + i\, r + j]

    (for ``D = 2``; the channel index splits as ``(c, i_1, ..., i_D)``, row-major). This is
    NNlib's Julia layout translated to channels-last, and PyTorch's ``pixel_shuffle`` order.

    >>> import jax.numpy as jnp, luxc
    >>> x = jnp.arange(4.0).reshape(1, 1, 1, 4)
    >>> luxc.nn.PixelShuffle(2)(x, {}, {})[0][0, :, :, 0].tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    """

    def __init__(self, r: int):
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"PixelShuffle: r must be a positive int; received {r!r}")
        self.r = r

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_rank(x, 3, "a (N, *spatial, C) input with at least one spatial axis")
        batch, *spatial, chs = jnp.shape(x)
        d, r = len(spatial), self.r
        if chs % r ** d:
            raise LayerShapeError(f"{self.summary()} needs channels divisible by r^{d} = "
                                  f"{r ** d}; received an input of shape {jnp.shape(x)}")
        x = jnp.reshape(x, (batch, *spatial, chs // r ** d, *([r] * d)))
        # (N, S_1..S_D, C, r_1..r_D) -> (N, S_1, r_1, ..., S_D, r_D, C)
        perm = [0] + [a for i in range(d) for a in (1 + i, d + 2 + i)] + [d + 1]
        x = jnp.transpose(x, perm)
        return jnp.reshape(x, (batch, *(s * r for s in spatial), chs // r ** d)), st

    def summary(self) -> str:
        return f"PixelShuffle({self.r})"

