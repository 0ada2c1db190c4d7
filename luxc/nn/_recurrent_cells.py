r"""Lux's recurrent cells: ``RNNCell``, ``LSTMCell`` and ``GRUCell`` (``src/layers/recurrent.jl``).

A cell is one time step. ``(y, carry), st = cell(x, ps, st)`` starts from the initial carry
(zeros from ``init_state``, or the trained ``hidden_state``/``memory`` parameters broadcast over
the batch); ``(y, carry), st = cell((x, carry), ps, st)`` continues from a given carry. Shapes
are batch-first: ``x`` is ``(batch, in_dims)`` (or ``(in_dims,)`` unbatched), every carry entry
and ``y`` are ``(batch, out_dims)``. LSTM's carry is ``(h, c)``, GRU's and RNN's ``(h,)``.

The ``G`` gates of a cell are stacked along the first axis of its parameters, in Lux's order:
``weight_ih`` ``(G·out, in)``, ``weight_hh`` ``(G·out, out)``, ``bias_ih`` and ``bias_hh``
``(G·out,)``; gate projections are :math:`x W_{ih}^\top + b_{ih}` and
:math:`h W_{hh}^\top + b_{hh}`. :class:`luxc.nn.Recurrence` runs a cell over a sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn import _draws
from luxc.nn._core import AbstractLayer, LayerShapeError
from luxc.nn._eltype import match_eltype
from luxc.nn._init import Initializer, activation_name, uniform_fan_in, zeros

Carry = tuple[jax.Array, ...]


def glorot_uniform(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    r"""Lux's ``glorot_uniform`` for a matrix ``(out, in)``: U(±b), :math:`b = \sqrt{6/(in + out)}`."""
    fan_out, fan_in = shape
    bound = math.sqrt(6 / (fan_in + fan_out))
    return _draws.uniform(key, shape, dtype, -bound, bound)


def _per_gate(owner: str, name: str, init: Initializer | Sequence[Initializer] | None,
              gates: int, default: Initializer) -> tuple[Initializer, ...]:
    if init is None:
        return (default,) * gates
    if callable(init):
        return (init,) * gates
    if isinstance(init, tuple | list) and len(init) == gates and all(map(callable, init)):
        return tuple(init)
    raise ValueError(f"{owner}: {name} must be one initialiser init(key, shape, dtype) or a tuple "
                     f"of {gates} (one per gate); received {init!r}")


def _keywords(arguments: dict[str, Any]) -> dict[str, Any]:
    """A cell constructor's keyword arguments (from its ``locals()``), for the base class."""
    return {k: v for k, v in arguments.items()
            if k not in ("self", "__class__", "in_dims", "out_dims", "activation")}


def _check_dims(owner: str, in_dims: int, out_dims: int) -> None:
    for name, v in (("in_dims", in_dims), ("out_dims", out_dims)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{owner}: {name} must be a positive int; received {v!r}")


class AbstractRecurrentCell(AbstractLayer):
    """One step of a recurrent network (Lux's ``AbstractRecurrentCell``).

    Subclasses set ``gates`` (G), ``carry_names`` (the parameter name of each carry entry when it
    is trained) and implement ``_step(x, carry, ps) -> (y, carry)`` on batched inputs.

    Parameters: ``weight_ih (G·out, in)``, ``weight_hh (G·out, out)``; ``bias_ih``, ``bias_hh``
    ``(G·out,)`` when ``use_bias``; ``hidden_state (out,)`` when ``train_state``; ``memory
    (out,)`` when ``train_memory`` (LSTM). State: ``rng``, the key ``init_state`` draws from.
    """

    gates: int = 1
    carry_names: tuple[str, ...] = ("hidden_state",)

    def __init__(self, in_dims: int, out_dims: int, *, use_bias: bool = True,
                 train_state: bool = False, train_memory: bool = False, init_weight: Any = None,
                 init_recurrent_weight: Any = None, init_bias: Any = None,
                 init_state: Initializer = zeros, init_memory: Initializer = zeros,
                 dtype: jnp.dtype = jnp.float32):
        owner = type(self).__name__
        _check_dims(owner, in_dims, out_dims)
        self.in_dims, self.out_dims, self.dtype = in_dims, out_dims, dtype
        self.use_bias, self.train_state, self.train_memory = use_bias, train_state, train_memory
        # Lux's docstrings: U(±1/√out_dims) when an initialiser is `nothing` (its code draws
        # randn-shaped values instead; docs/layers/recurrent.md).
        lux_uniform, g = uniform_fan_in(out_dims), self.gates
        self.init_weight = _per_gate(owner, "init_weight", init_weight, g, lux_uniform)
        recurrent = init_weight if init_recurrent_weight is None else init_recurrent_weight
        self.init_recurrent_weight = _per_gate(owner, "init_recurrent_weight", recurrent, g,
                                               lux_uniform)
        self.init_bias = _per_gate(owner, "init_bias", init_bias, g, lux_uniform)
        for name, init in (("init_state", init_state), ("init_memory", init_memory)):
            if not callable(init):
                raise ValueError(f"{owner}: {name} must be an initialiser init(key, shape, dtype); "
                                 f"received {init!r}")
        self.init_state, self.init_memory = init_state, init_memory

    def _trained(self) -> tuple[bool, ...]:
        return (self.train_state, self.train_memory)[:len(self.carry_names)]

    def init_parameters(self, key: jax.Array) -> dict:
        k_ih, k_hh, k_bih, k_bhh, k_h, k_c = _draws.split(key, 6)
        out, d = self.out_dims, self.dtype

        def stacked(k: jax.Array, inits: tuple[Initializer, ...], shape: tuple[int, ...]):
            keys = _draws.split(k, self.gates)
            return jnp.concatenate([init(kg, shape, d) for init, kg in zip(inits, keys)])

        ps = {"weight_ih": stacked(k_ih, self.init_weight, (out, self.in_dims)),
              "weight_hh": stacked(k_hh, self.init_recurrent_weight, (out, out))}
        if self.use_bias:
            ps["bias_ih"] = stacked(k_bih, self.init_bias, (out,))
            ps["bias_hh"] = stacked(k_bhh, self.init_bias, (out,))
        inits, keys = (self.init_state, self.init_memory), (k_h, k_c)
        for name, trained, init, k in zip(self.carry_names, self._trained(), inits, keys):
            if trained:
                ps[name] = init(k, (out,), d)
        return ps

    def init_states(self, key: jax.Array) -> dict:
        # Raw key data (uint32[2]) rather than a typed key: it survives export and checkpoints.
        return {"rng": jax.random.key_data(key)}

    def initial_carry(self, x: jax.Array, ps: dict, st: dict) -> tuple[Carry, dict]:
        """The carry a sequence starts from, for a batched ``x`` of shape ``(batch, in_dims)``:
        each entry ``(batch, out_dims)``, the trained vector repeated over the batch or drawn
        by ``init_state``/``init_memory`` (zeros by default) with a key split off ``st["rng"]``."""
        dtype = jnp.result_type(x.dtype, ps["weight_ih"].dtype)
        shape = (x.shape[0], self.out_dims)
        rng = jax.random.wrap_key_data(st["rng"])
        carry = []
        for name, trained, init in zip(self.carry_names, self._trained(),
                                       (self.init_state, self.init_memory)):
            if trained:
                carry.append(jnp.broadcast_to(ps[name].astype(dtype), shape))
            else:
                rng, sub = jax.random.split(rng)
                carry.append(jax.lax.stop_gradient(jnp.asarray(init(sub, shape, dtype), dtype)))
        return tuple(carry), {**st, "rng": jax.random.key_data(rng)}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[tuple[jax.Array, Carry], dict]:
        carry = None
        if isinstance(x, tuple):
            if len(x) != 2:
                raise LayerShapeError(f"{self.summary()} takes x or (x, carry); received a tuple "
                                      f"of {len(x)} elements")
            x, carry = x
        x = jnp.asarray(x)
        unbatched = x.ndim == 1
        if x.ndim not in (1, 2) or x.shape[-1] != self.in_dims:
            raise LayerShapeError(f"{self.summary()} expects x of shape (batch, {self.in_dims}) "
                                  f"or ({self.in_dims},); received {x.shape}")
        if unbatched:
            x = x[None]
            carry = None if carry is None else tuple(jnp.asarray(c)[None] for c in carry)
        x = match_eltype(self, ps, st, x)
        if carry is None:
            carry, st = self.initial_carry(x, ps, st)
        else:
            self._check_carry(carry, x.shape[0], (x.shape[1:] if unbatched else x.shape))
        y, carry = self._step(x, tuple(carry), ps)
        if unbatched:
            y, carry = y[0], tuple(c[0] for c in carry)
        return (y, carry), st

    def _check_carry(self, carry: Any, batch: int, x_shape: tuple[int, ...]) -> None:
        n = len(self.carry_names)
        names = "(h, c)" if n == 2 else "(h,)"
        if not isinstance(carry, tuple | list) or len(carry) != n:
            got = (f"a {type(carry).__name__} of shapes {[np.shape(c) for c in carry]}"
                   if isinstance(carry, tuple | list) else type(carry).__name__)
            raise LayerShapeError(f"{self.summary()}: carry must be a tuple of {n} arrays "
                                  f"{names}; received {got}")
        for i, c in enumerate(carry):
            if np.shape(c) != (batch, self.out_dims):
                want = (batch, self.out_dims) if len(x_shape) == 2 else (self.out_dims,)
                got = np.shape(c) if len(x_shape) == 2 else np.shape(c)[1:]
                raise LayerShapeError(
                    f"{self.summary()}: carry[{i}] must have shape {want} for x of shape "
                    f"{x_shape}; received {got}")

    def _projections(self, x: jax.Array, h: jax.Array, ps: dict) -> tuple[jax.Array, jax.Array]:
        """``(x W_ihᵀ + b_ih, h W_hhᵀ + b_hh)``, each ``(batch, G·out)``."""
        gx, gh = x @ ps["weight_ih"].T, h @ ps["weight_hh"].T
        if self.use_bias:
            gx, gh = gx + ps["bias_ih"], gh + ps["bias_hh"]
        return gx, gh

    def _step(self, x: jax.Array, carry: Carry, ps: dict) -> tuple[jax.Array, Carry]:
        raise TypeError(f"{type(self).__name__} does not define _step(x, carry, ps)")

    def _flags(self) -> str:
        out = "" if self.use_bias else ", use_bias=false"
        out += ", train_state=true" if self.train_state else ""
        return out + (", train_memory=true" if self.train_memory else "")


class RNNCell(AbstractRecurrentCell):
    r"""Lux's Elman ``RNNCell``: :math:`h' = \sigma(x W_{ih}^\top + b_{ih} + h W_{hh}^\top +
    b_{hh})`; ``y = h'``, ``carry = (h',)``.

    Args:
        in_dims, out_dims: sizes of ``x``'s last axis and of ``h``.
        activation: :math:`\sigma` (default ``tanh``; ``None`` is the identity).
        use_bias: whether ``bias_ih``/``bias_hh`` exist.
        train_state: the initial ``h`` is the parameter ``hidden_state (out,)``.
        init_weight, init_recurrent_weight, init_bias: ``init(key, shape, dtype)``; default
            U(±1/√out_dims) as Lux's docstring (``init_recurrent_weight`` defaults to
            ``init_weight``).
        init_state: draws the initial ``h`` (zeros).

    >>> import jax, jax.numpy as jnp, luxc
    >>> cell = luxc.nn.RNNCell(3, 5)
    >>> ps, st = luxc.setup(0, cell)
    >>> (y, (h,)), st = cell(jnp.ones((2, 3)), ps, st)
    >>> y.shape, ps["weight_hh"].shape
    ((2, 5), (5, 5))
    """

    def __init__(self, in_dims: int, out_dims: int, activation: Callable | None = jnp.tanh, *,
                 use_bias: bool = True, train_state: bool = False,
                 init_weight: Initializer | None = None,
                 init_recurrent_weight: Initializer | None = None,
                 init_bias: Initializer | None = None, init_state: Initializer = zeros,
                 dtype: jnp.dtype = jnp.float32):
        if activation is not None and not callable(activation):
            raise ValueError(f"RNNCell: activation must be a function or None; received "
                             f"{activation!r}")
        self.activation = activation
        super().__init__(in_dims, out_dims, **_keywords(locals()))

    def _step(self, x: jax.Array, carry: Carry, ps: dict) -> tuple[jax.Array, Carry]:
        gx, gh = self._projections(x, carry[0], ps)
        h = gx + gh
        h = self.activation(h) if self.activation else h
        return h, (h,)

    def summary(self) -> str:
        act = activation_name(self.activation)
        return f"RNNCell({self.in_dims} => {self.out_dims}{', ' + act if act else ''}{self._flags()})"


class LSTMCell(AbstractRecurrentCell):
    r"""Lux's ``LSTMCell``; gates ``i, f, g, o`` (in this order along the parameters' first axis):

    .. math::
        [i, f, g, o] = x W_{ih}^\top + b_{ih} + h W_{hh}^\top + b_{hh}, \quad
        c' = \sigma(f) c + \sigma(i) \tanh(g), \quad h' = \sigma(o) \tanh(c')

    ``y = h'``, ``carry = (h', c')``. Arguments as :class:`RNNCell` (no activation), plus
    ``train_memory`` (the initial ``c`` is the parameter ``memory (out,)``) and
    ``init_memory``; ``init_weight``, ``init_recurrent_weight`` and ``init_bias`` may be
    tuples of 4 initialisers, one per gate.

    >>> import jax, jax.numpy as jnp, luxc
    >>> cell = luxc.nn.LSTMCell(3, 5)
    >>> ps, st = luxc.setup(0, cell)
    >>> (y, (h, c)), st = cell(jnp.ones((2, 3)), ps, st)
    >>> ps["weight_ih"].shape, c.shape, luxc.parameter_count(cell)
    ((20, 3), (2, 5), 200)
    """

    gates = 4
    carry_names = ("hidden_state", "memory")

    def __init__(self, in_dims: int, out_dims: int, *, use_bias: bool = True,
                 train_state: bool = False, train_memory: bool = False,
                 init_weight: Initializer | Sequence[Initializer] | None = None,
                 init_recurrent_weight: Initializer | Sequence[Initializer] | None = None,
                 init_bias: Initializer | Sequence[Initializer] | None = None,
                 init_state: Initializer = zeros, init_memory: Initializer = zeros,
                 dtype: jnp.dtype = jnp.float32):
        super().__init__(in_dims, out_dims, **_keywords(locals()))

    def _step(self, x: jax.Array, carry: Carry, ps: dict) -> tuple[jax.Array, Carry]:
        h, c = carry
        gx, gh = self._projections(x, h, ps)
        i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, (h, c)

    def summary(self) -> str:
        return f"LSTMCell({self.in_dims} => {self.out_dims}{self._flags()})"


class GRUCell(AbstractRecurrentCell):
    r"""Lux's ``GRUCell``; gates ``r, z, n`` (in this order), ``r`` multiplying the whole
    recurrent projection of ``n`` (bias included), as Lux (and PyTorch):

    .. math::
        r = \sigma(x W_{ir}^\top + b_{ir} + h W_{hr}^\top + b_{hr}), \quad
        z = \sigma(x W_{iz}^\top + b_{iz} + h W_{hz}^\top + b_{hz}) \\
        n = \tanh(x W_{in}^\top + b_{in} + r \odot (h W_{hn}^\top + b_{hn})), \quad
        h' = (1 - z) \odot n + z \odot h

    ``y = h'``, ``carry = (h',)``. Arguments as :class:`LSTMCell` (tuples of 3 initialisers);
    default weights ``glorot_uniform`` per gate block, biases U(±1/√out_dims) (Lux's
    docstring; its code uses zeros).

    >>> import jax, jax.numpy as jnp, luxc
    >>> cell = luxc.nn.GRUCell(3, 5)
    >>> ps, st = luxc.setup(0, cell)
    >>> (y, (h,)), st = cell(jnp.ones(3), ps, st)  # unbatched: (in_dims,)
    >>> y.shape, ps["bias_hh"].shape
    ((5,), (15,))
    """

    gates = 3

    def __init__(self, in_dims: int, out_dims: int, *, use_bias: bool = True,
                 train_state: bool = False,
                 init_weight: Initializer | Sequence[Initializer] | None = glorot_uniform,
                 init_recurrent_weight: Initializer | Sequence[Initializer] | None = None,
                 init_bias: Initializer | Sequence[Initializer] | None = None,
                 init_state: Initializer = zeros, dtype: jnp.dtype = jnp.float32):
        super().__init__(in_dims, out_dims, **_keywords(locals()))

    def _step(self, x: jax.Array, carry: Carry, ps: dict) -> tuple[jax.Array, Carry]:
        (h,) = carry
        gx, gh = self._projections(x, h, ps)
        xr, xz, xn = jnp.split(gx, 3, axis=-1)
        hr, hz, hn = jnp.split(gh, 3, axis=-1)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return h, (h,)

    def summary(self) -> str:
        return f"GRUCell({self.in_dims} => {self.out_dims}{self._flags()})"
