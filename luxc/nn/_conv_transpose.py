"""``ConvTranspose``: the adjoint (transpose) of a convolution, channels-last."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from luxc.nn import _draws
from luxc.nn._conv import (
    SPECS,
    ConvWindow,
    Padding,
    SamePad,
    spatial_tuple,
    true_convolution_kernel,
    window_padding,
    window_string,
)
from luxc.nn._core import LayerShapeError
from luxc.nn._eltype import match_eltype
from luxc.nn._init import Initializer, zeros


def glorot_uniform(fan_in: int, fan_out: int, gain: float = 1.0) -> Initializer:
    r"""U(±gain·√(6 / (fan_in + fan_out))), Lux's ``glorot_uniform``."""
    bound = gain * math.sqrt(6 / (fan_in + fan_out)) if fan_in + fan_out else 0.0

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return _draws.uniform(key, shape, dtype, -bound, bound)

    return init


class ConvTranspose(ConvWindow):
    r"""Transposed convolution: the adjoint of :class:`Conv` ``(kernel_size, out_chs, in_chs)``
    with the same weight, stride, pad, dilation, groups and ``cross_correlation``:

    .. math::
        \langle \mathrm{Conv}_w(z),\, x \rangle = \langle z,\, \mathrm{ConvTranspose}_w(x)
        \rangle \quad\text{for all } z, x, \qquad y = \sigma(\mathrm{ConvTranspose}_w(x) + b)

    Args:
        kernel_size: spatial window, e.g. ``(3, 3)``.
        in_chs, out_chs: channels of the input and of the output.
        activation: element-wise :math:`\sigma`; ``None`` is the identity.
        stride, dilation: per spatial axis (an int applies to all).
        pad: an int, ``N`` ints or ``2N`` ints ``(lo_1, hi_1, ...)``: the padding of the
            convolution this is the adjoint of, so it crops the output; ``SamePad()`` (Lux's)
            gives ``n * stride`` positions.
        outpad: extra positions at the end of each output axis (each ``< stride``), to invert
            a strided :class:`Conv`'s size exactly.
        groups: ``in_chs`` and ``out_chs`` must be divisible by it.
        cross_correlation: ``False`` (Lux's default): the adjoint of a true convolution.
        init_weight, init_bias: defaults as Lux: ``glorot_uniform`` over the weight (fans
            ``prod(kernel_size) * out_chs // groups`` and ``prod(kernel_size) * in_chs``) and a
            zero bias.

    Shapes: ``x`` is ``(N, *spatial, in_chs)``; ``weight`` is ``(*kernel_size, out_chs // groups,
    in_chs)`` — the weight of ``Conv(kernel_size, out_chs, in_chs)``, Lux's Julia order; ``bias``
    is ``(out_chs,)``. Output size per axis (Lux's):
    :math:`(n - 1)s + 1 + d(k - 1) - (lo + hi) + \mathrm{outpad}`.

    >>> import jax, jax.numpy as jnp, luxc
    >>> up = luxc.nn.ConvTranspose((3, 3), 2, 4, stride=2, pad=luxc.nn.SamePad())
    >>> ps, st = luxc.setup(jax.random.key(0), up)
    >>> ps["weight"].shape, up(jnp.ones((1, 5, 5, 2)), ps, st)[0].shape
    ((3, 3, 4, 2), (1, 10, 10, 4))
    """

    def __init__(
        self,
        kernel_size: Sequence[int],
        in_chs: int,
        out_chs: int,
        activation: Callable | None = None,
        *,
        stride: int | Sequence[int] = 1,
        pad: Padding = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        outpad: int | Sequence[int] = 0,
        use_bias: bool = True,
        cross_correlation: bool = False,
        init_weight: Initializer | None = None,
        init_bias: Initializer | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        self._configure(kernel_size, in_chs, out_chs, activation, stride, dilation, groups,
                        use_bias, cross_correlation, dtype)
        k, n = self.kernel_size, len(self.kernel_size)
        self.outpad = spatial_tuple(outpad, n, "ConvTranspose: outpad")
        if any(o >= s for o, s in zip(self.outpad, self.stride)):
            raise ValueError(f"ConvTranspose: outpad={outpad!r} must be smaller than "
                             f"stride={self.stride} on every axis")
        if isinstance(pad, str):
            raise ValueError(f"ConvTranspose: pad must be an int, {n} or {2 * n} ints or "
                             f"SamePad(); received {pad!r}")
        # Lux's SamePad for a transposed convolution: the window of k - stride + 1 taps.
        window = tuple(a - s + 1 for a, s in zip(k, self.stride)) if isinstance(pad, SamePad) else k
        self.pad = window_padding(pad, window, self.dilation, "ConvTranspose: pad")
        taps = math.prod(k)
        self.init_weight = init_weight or glorot_uniform(taps * out_chs // groups, taps * in_chs)
        self.init_bias = init_bias or zeros

    def weight_shape(self) -> tuple[int, ...]:
        return (*self.kernel_size, self.out_chs // self.groups, self.in_chs)

    def output_size(self, in_size: Sequence[int]) -> tuple[int, ...]:
        """The spatial output size for spatial input size ``in_size`` (Lux's formula)."""
        return tuple((i - 1) * s + 1 + d * (k - 1) - lo - hi + o for i, s, d, k, (lo, hi), o in
                     zip(in_size, self.stride, self.dilation, self.kernel_size, self.pad,
                         self.outpad))

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n = len(self.kernel_size)
        self._check_rank(x, n + 2, f"a (N, {', '.join(['d'] * n)}, {self.in_chs}) input")
        self._check_features(x, self.in_chs)
        x = match_eltype(self, ps, st, x)
        size = self.output_size(jnp.shape(x)[1:-1])
        if jnp.ndim(x) != n + 2 or min(size) < 1:
            raise LayerShapeError(f"{self.summary()}: an input of shape {jnp.shape(x)} gives no "
                                  f"output (spatial size {size})")
        kernel = true_convolution_kernel(ps["weight"], n, self.cross_correlation)

        def conv(z: jax.Array) -> jax.Array:  # Conv(kernel_size, out_chs, in_chs), no bias
            return lax.conv_general_dilated(z, kernel, self.stride, self.pad,
                                            rhs_dilation=self.dilation, dimension_numbers=SPECS[n],
                                            feature_group_count=self.groups)

        z = jax.ShapeDtypeStruct((jnp.shape(x)[0], *size, self.out_chs), x.dtype)
        (y,) = jax.linear_transpose(conv, z)(x)
        return self._bias(y, ps), st

    def summary(self) -> str:
        return super().summary(window_string("outpad", self.outpad, 0))
