"""Convolution and max-pooling, channels-last: inputs are ``(N, *spatial, C)``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from luxc.nn._core import AbstractLayer
from luxc.nn._eltype import match_eltype
from luxc.nn._init import Initializer, activation_name, lux_gain, uniform_fan_in

_SPECS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _tuple(v: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    t = (v,) * n if isinstance(v, int) else tuple(v)
    if len(t) != n or not all(isinstance(i, int) and i >= 0 for i in t):
        raise ValueError(f"{what} must be an int or {n} non-negative ints; received {v!r}")
    return t


def _padding(pad: int | Sequence[int] | str, n: int) -> str | list[tuple[int, int]]:
    if isinstance(pad, str):
        if pad.upper() not in ("SAME", "VALID"):
            raise ValueError(f"pad must be an int, a tuple, 'same' or 'valid'; received {pad!r}")
        return pad.upper()
    return [(p, p) for p in _tuple(pad, n, "pad")]


class Conv(AbstractLayer):
    r"""N-d convolution (cross-correlation, as in Lux), :math:`y = \sigma(w \star x + b)`.

    Args:
        kernel_size: spatial window, e.g. ``(5, 5)``.
        in_chs, out_chs: channels of the input and of the output.
        activation: element-wise :math:`\sigma`; ``None`` is the identity.
        stride, pad, dilation: per spatial axis (an int applies to all); ``pad`` may be
            ``"same"`` or ``"valid"``.
        groups: grouped convolution; ``in_chs`` and ``out_chs`` must be divisible by it.
        init_weight: ``init(key, shape, dtype)``; default as Lux: U(±√3·gain/√fan_in) with the
            gain of ``activation`` (``lux_gain``), ``fan_in = prod(kernel_size) * in_chs //
            groups``; the bias is U(±1/√fan_in).

    Shapes: ``x`` is ``(N, *spatial, in_chs)``; ``weight`` is ``(*kernel_size, in_chs // groups,
    out_chs)``; ``bias`` is ``(out_chs,)``.
    """

    def __init__(
        self,
        kernel_size: Sequence[int],
        in_chs: int,
        out_chs: int,
        activation: Callable | None = None,
        *,
        stride: int | Sequence[int] = 1,
        pad: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        init_weight: Initializer | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.kernel_size = _tuple(kernel_size, len(tuple(kernel_size)), "kernel_size")
        n = len(self.kernel_size)
        if n not in _SPECS:
            raise ValueError(f"Conv supports 1, 2 or 3 spatial axes; received {kernel_size!r}")
        if in_chs % groups or out_chs % groups:
            raise ValueError(
                f"Conv: in_chs={in_chs} and out_chs={out_chs} must be divisible by groups={groups}"
            )
        self.in_chs, self.out_chs, self.activation, self.groups = in_chs, out_chs, activation, groups
        self.stride = _tuple(stride, n, "stride")
        self.dilation = _tuple(dilation, n, "dilation")
        self.pad = _padding(pad, n)
        self.use_bias, self.dtype = use_bias, dtype
        fan_in = (in_chs // groups) * math.prod(self.kernel_size)
        self.init_weight = init_weight or uniform_fan_in(fan_in, lux_gain(activation))
        self.init_bias = uniform_fan_in(fan_in)

    def init_parameters(self, key: jax.Array) -> dict:
        kw, kb = jax.random.split(key)
        shape = (*self.kernel_size, self.in_chs // self.groups, self.out_chs)
        ps = {"weight": self.init_weight(kw, shape, self.dtype)}
        if self.use_bias:
            ps["bias"] = self.init_bias(kb, (self.out_chs,), self.dtype)
        return ps

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n = len(self.kernel_size)
        self._check_rank(x, n + 2, f"a (N, {', '.join(['d'] * n)}, {self.in_chs}) input")
        self._check_features(x, self.in_chs)
        x = match_eltype(self, ps, st, x)
        y = lax.conv_general_dilated(
            x,
            ps["weight"],
            window_strides=self.stride,
            padding=self.pad,
            rhs_dilation=self.dilation,
            dimension_numbers=_SPECS[n],
            feature_group_count=self.groups,
        )
        if self.use_bias:
            y = y + ps["bias"]
        return (self.activation(y) if self.activation else y), st

    def summary(self) -> str:
        act = activation_name(self.activation)
        ks = "×".join(map(str, self.kernel_size))
        return f"Conv({ks}, {self.in_chs} => {self.out_chs}{', ' + act if act else ''})"


class MaxPool(AbstractLayer):
    """Max pooling over windows of the spatial axes of ``(N, *spatial, C)``.

    ``stride`` defaults to the window (non-overlapping pooling, as in Lux).
    """

    def __init__(
        self,
        window: Sequence[int],
        *,
        stride: int | Sequence[int] | None = None,
        pad: int | Sequence[int] | str = 0,
    ):
        self.window = _tuple(window, len(tuple(window)), "window")
        n = len(self.window)
        self.stride = self.window if stride is None else _tuple(stride, n, "stride")
        self.pad = _padding(pad, n)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n = len(self.window)
        self._check_rank(x, n + 2, f"a (N, {', '.join(['d'] * n)}, C) input")
        pad = self.pad if isinstance(self.pad, str) else [(0, 0), *self.pad, (0, 0)]
        # A Python -inf init is what lets jax recognise the max monoid (and differentiate it).
        y = lax.reduce_window(x, -jnp.inf, lax.max, (1, *self.window, 1), (1, *self.stride, 1), pad)
        return y, st

    def summary(self) -> str:
        return f"MaxPool({'×'.join(map(str, self.window))})"
