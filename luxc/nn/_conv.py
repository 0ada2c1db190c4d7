"""Convolution, channels-last: inputs are ``(N, *spatial, C)``; and the window arguments
(``stride``, ``pad``, ``dilation``, Lux's ``SamePad()``) that convolutions and pools share.

Spatial tuples (``kernel_size``, ``stride``, ...) follow the input's spatial axes in order: for
``(N, H, W, C)`` images, ``(kh, kw)``. A Lux model's Julia tuples are ``(kw, kh)`` for its
``(W, H, C, N)`` arrays: reverse them when porting a non-square window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from luxc.nn import _draws
from luxc.nn._core import AbstractLayer
from luxc.nn._eltype import match_eltype
from luxc.nn._init import Initializer, activation_name, lux_gain, uniform_fan_in

SPECS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


class SamePad:
    r"""Lux's ``SamePad()``: pad each spatial axis by :math:`k_{eff} - 1` in total,
    :math:`\lceil (k_{eff} - 1)/2 \rceil` before and :math:`\lfloor (k_{eff} - 1)/2 \rfloor`
    after, with :math:`k_{eff} = k + (k - 1)(d - 1)` (``d`` the dilation). With stride ``s``
    the output has :math:`\lceil n / s \rceil` positions.

    It differs from ``pad="same"`` (XLA's ``SAME``), which puts the odd element after and
    depends on the input size when ``s > 1``: the output sizes agree, the values need not.
    """

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SamePad)

    def __hash__(self) -> int:
        return hash(SamePad)

    def __repr__(self) -> str:
        return "SamePad()"


Padding = int | Sequence[int] | str | SamePad


def spatial_tuple(v: int | Sequence[int], n: int, what: str, minimum: int = 0) -> tuple[int, ...]:
    """``v`` as ``n`` ints (an int applies to every spatial axis), each ``>= minimum``."""
    t = (v,) * n if isinstance(v, int) else tuple(v)
    if len(t) != n or not all(isinstance(i, int) and i >= minimum for i in t):
        raise ValueError(f"{what} must be an int or {n} ints >= {minimum}; received {v!r}")
    return t


def window_padding(pad: Padding, kernel: Sequence[int], dilation: Sequence[int],
                   what: str = "pad") -> str | tuple[tuple[int, int], ...]:
    """``pad`` as ``((lo, hi), ...)`` per spatial axis, or ``"SAME"``/``"VALID"``.

    ``pad`` is an int (every side), ``N`` ints (both sides of each axis), ``2N`` ints
    ``(lo_1, hi_1, lo_2, hi_2, ...)`` (Lux's asymmetric form), :class:`SamePad` or the strings
    ``"same"``/``"valid"`` (XLA's)."""
    n = len(kernel)
    if isinstance(pad, SamePad):
        total = [k + (k - 1) * (d - 1) - 1 for k, d in zip(kernel, dilation)]
        return tuple((-(-t // 2), t // 2) for t in total)
    if isinstance(pad, str):
        if pad.upper() not in ("SAME", "VALID"):
            raise ValueError(
                f"{what} must be an int, {n} or {2 * n} ints, SamePad(), 'same' or 'valid'; "
                f"received {pad!r}")
        return pad.upper()
    if not isinstance(pad, int) and len(tuple(pad)) == 2 * n:
        flat = spatial_tuple(pad, 2 * n, what)
        return tuple(zip(flat[0::2], flat[1::2]))
    return tuple((p, p) for p in spatial_tuple(pad, n, what))


def tuple_string(t: tuple[int, ...]) -> str:
    """Lux's ``PrettyPrinting.tuple_string``: one number when all are equal, else the tuple."""
    return str(t[0]) if all(v == t[0] for v in t) else str(t)


def padding_string(pad: str | tuple[tuple[int, int], ...]) -> str:
    """The ``pad=...`` part of a summary, empty for no padding (Lux prints only non-zero)."""
    if isinstance(pad, str):
        return f", pad={pad.lower()!r}" if pad == "SAME" else ""
    flat = tuple(p for side in pad for p in side)
    return f", pad={tuple_string(flat)}" if any(flat) else ""


def window_string(name: str, value: tuple[int, ...], default: int | tuple[int, ...]) -> str:
    """``, name=value`` when ``value`` is not the default (Lux's printout)."""
    unchanged = value == default if isinstance(default, tuple) else all(v == default for v in value)
    return "" if unchanged else f", {name}={tuple_string(value)}"


def true_convolution_kernel(weight: jax.Array, n: int, cross_correlation: bool) -> jax.Array:
    """The kernel XLA's cross-correlation needs: ``weight`` reversed along its ``n`` leading
    (spatial) axes for a true convolution. The reverse is a weight-sized copy per step that XLA
    fuses into the gradient's consumers; XLA:CPU's own ``window_reversal`` was measured 40×
    slower than the reverse and a plain convolution."""
    return weight if cross_correlation else lax.rev(weight, tuple(range(n)))


class ConvWindow(AbstractLayer):
    """What :class:`Conv` and ``ConvTranspose`` share: the kernel, channels, window arguments,
    ``cross_correlation`` and their Lux-style printout."""

    def _configure(self, kernel_size: Sequence[int], in_chs: int, out_chs: int,
                   activation: Callable | None, stride: int | Sequence[int],
                   dilation: int | Sequence[int], groups: int, use_bias: bool,
                   cross_correlation: bool, dtype: jnp.dtype) -> None:
        name = type(self).__name__
        self.kernel_size = spatial_tuple(kernel_size, len(tuple(kernel_size)), f"{name}: kernel_size", 1)
        n = len(self.kernel_size)
        if n not in SPECS:
            raise ValueError(f"{name} supports 1, 2 or 3 spatial axes; received {kernel_size!r}")
        if not isinstance(groups, int) or groups < 1 or in_chs % groups or out_chs % groups:
            raise ValueError(f"{name}: in_chs={in_chs} and out_chs={out_chs} must be divisible "
                             f"by groups={groups}")
        self.in_chs, self.out_chs, self.activation, self.groups = in_chs, out_chs, activation, groups
        self.stride = spatial_tuple(stride, n, f"{name}: stride", 1)
        self.dilation = spatial_tuple(dilation, n, f"{name}: dilation", 1)
        self.use_bias, self.cross_correlation, self.dtype = use_bias, bool(cross_correlation), dtype

    def weight_shape(self) -> tuple[int, ...]:
        return (*self.kernel_size, self.in_chs // self.groups, self.out_chs)

    def init_parameters(self, key: jax.Array) -> dict:
        kw, kb = _draws.split(key)
        ps = {"weight": self.init_weight(kw, self.weight_shape(), self.dtype)}
        if self.use_bias:
            ps["bias"] = self.init_bias(kb, (self.out_chs,), self.dtype)
        return ps

    def _bias(self, y: jax.Array, ps: dict) -> jax.Array:
        if self.use_bias:
            y = y + ps["bias"]
        return self.activation(y) if self.activation else y

    def summary(self, extra: str = "") -> str:
        act = activation_name(self.activation)
        return (f"{type(self).__name__}({self.kernel_size}, {self.in_chs} => {self.out_chs}"
                f"{', ' + act if act else ''}{padding_string(self.pad)}"
                f"{window_string('stride', self.stride, 1)}"
                f"{window_string('dilation', self.dilation, 1)}"
                f"{f', groups={self.groups}' if self.groups != 1 else ''}{extra}"
                f"{'' if self.use_bias else ', use_bias=false'}"
                f"{', cross_correlation=true' if self.cross_correlation else ''})")


class Conv(ConvWindow):
    r"""N-d convolution, :math:`y = \sigma(w * x + b)`: a TRUE convolution (the kernel flipped
    along its spatial axes), as Lux's default; ``cross_correlation=True`` gives
    :math:`y = \sigma(w \star x + b)` (PyTorch's and XLA's convolution, no flip):

    .. math::
        (w \star x)[n, \mathbf{s}, o] = \sum_{\mathbf{k}, i} x[n, \mathbf{s}\cdot\mathrm{stride}
        + \mathbf{k}\cdot\mathrm{dilation}, i]\, w[\mathbf{k}, i, o],\qquad
        w * x = \mathrm{flip}(w) \star x

    Args:
        kernel_size: spatial window, e.g. ``(5, 5)``.
        in_chs, out_chs: channels of the input and of the output.
        activation: element-wise :math:`\sigma`; ``None`` is the identity.
        stride, dilation: per spatial axis (an int applies to all).
        pad: an int, ``N`` ints, ``2N`` ints ``(lo_1, hi_1, ...)``, :class:`SamePad` (Lux's), or
            ``"same"``/``"valid"`` (XLA's).
        groups: grouped convolution; ``in_chs`` and ``out_chs`` must be divisible by it.
        cross_correlation: ``False`` (Lux's default) flips the kernel.
        init_weight, init_bias: ``init(key, shape, dtype)``; defaults as Lux: the weight
            U(±√3·gain/√fan_in) with the gain of ``activation`` (``lux_gain``), the bias
            U(±1/√fan_in), ``fan_in = prod(kernel_size) * in_chs // groups``.

    Shapes: ``x`` is ``(N, *spatial, in_chs)``; ``weight`` is ``(*kernel_size, in_chs // groups,
    out_chs)`` (Lux's Julia order, the spatial axes as the input's); ``bias`` is ``(out_chs,)``.
    Output size per axis: :math:`\lfloor (n + lo + hi - d(k - 1) - 1)/s \rfloor + 1`.

    >>> import jax, jax.numpy as jnp, luxc
    >>> conv = luxc.nn.Conv((3,), 1, 1, use_bias=False)
    >>> x = jnp.zeros((1, 5, 1)).at[0, 2, 0].set(1.0)    # a unit impulse
    >>> ps = {"weight": jnp.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)}
    >>> conv(x, ps, {})[0][0, :, 0].tolist()             # a convolution returns the kernel
    [1.0, 2.0, 3.0]
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
        use_bias: bool = True,
        cross_correlation: bool = False,
        init_weight: Initializer | None = None,
        init_bias: Initializer | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        self._configure(kernel_size, in_chs, out_chs, activation, stride, dilation, groups,
                        use_bias, cross_correlation, dtype)
        self.pad = window_padding(pad, self.kernel_size, self.dilation, "Conv: pad")
        fan_in = (in_chs // groups) * math.prod(self.kernel_size)
        self.init_weight = init_weight or uniform_fan_in(fan_in, lux_gain(activation))
        self.init_bias = init_bias or uniform_fan_in(fan_in)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n = len(self.kernel_size)
        self._check_rank(x, n + 2, f"a (N, {', '.join(['d'] * n)}, {self.in_chs}) input")
        self._check_features(x, self.in_chs)
        x = match_eltype(self, ps, st, x)
        y = lax.conv_general_dilated(
            x,
            true_convolution_kernel(ps["weight"], n, self.cross_correlation),
            window_strides=self.stride,
            padding=self.pad,
            rhs_dilation=self.dilation,
            dimension_numbers=SPECS[n],
            feature_group_count=self.groups,
        )
        return self._bias(y, ps), st
