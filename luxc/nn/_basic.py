"""Dense, Chain, WrappedFunction and FlattenLayer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from luxc.nn import _chain_loop, _draws
from luxc.nn._core import AbstractContainerLayer, AbstractLayer, LayerShapeError, named_layers
from luxc.nn._eltype import match_eltype
from luxc.nn._init import Initializer, activation_name, lux_gain, uniform_fan_in


class Dense(AbstractLayer):
    r"""Fully connected layer, :math:`y = \sigma(x W^\top + b)`.

    Args:
        in_dims: size of the last axis of ``x``.
        out_dims: size of the last axis of ``y``.
        activation: element-wise :math:`\sigma`; ``None`` is the identity.
        use_bias: whether to add :math:`b`.
        init_weight, init_bias: ``init(key, shape, dtype)``; defaults as Lux: the weight
            U(±√3·gain/√in_dims) with the gain of ``activation`` (relu 2, tanh 5/3, …, see
            ``lux_gain``), the bias U(±1/√in_dims).

    Parameters: ``weight`` of shape ``(out_dims, in_dims)`` (Lux's layout), ``bias`` of shape
    ``(out_dims,)``. Input ``(..., in_dims)`` → output ``(..., out_dims)``.
    """

    def __init__(
        self,
        in_dims: int,
        out_dims: int,
        activation: Callable | None = None,
        *,
        use_bias: bool = True,
        init_weight: Initializer | None = None,
        init_bias: Initializer | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        for name, v in (("in_dims", in_dims), ("out_dims", out_dims)):
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"Dense: {name} must be a non-negative int; received {v!r}")
        self.in_dims, self.out_dims, self.activation = in_dims, out_dims, activation
        self.use_bias, self.dtype = use_bias, dtype
        self.init_weight = init_weight or uniform_fan_in(in_dims, lux_gain(activation))
        self.init_bias = init_bias or uniform_fan_in(in_dims)

    def init_parameters(self, key: jax.Array) -> dict:
        kw, kb = _draws.split(key)
        ps = {"weight": self.init_weight(kw, (self.out_dims, self.in_dims), self.dtype)}
        if self.use_bias:
            ps["bias"] = self.init_bias(kb, (self.out_dims,), self.dtype)
        return ps

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        self._check_features(x, self.in_dims)
        x = match_eltype(self, ps, st, x)
        y = jnp.matmul(x, ps["weight"].T)
        if self.use_bias:
            y = y + ps["bias"]
        return (self.activation(y) if self.activation else y), st

    def summary(self) -> str:
        act = activation_name(self.activation)
        extra = "" if self.use_bias else ", use_bias=False"
        return f"Dense({self.in_dims} => {self.out_dims}{', ' + act if act else ''}{extra})"


class WrappedFunction(AbstractLayer):
    """A parameter-free layer computing ``f(x)``."""

    def __init__(self, f: Callable[[Any], Any]):
        if not callable(f):
            raise TypeError(f"WrappedFunction expects a callable; received {type(f).__name__}")
        self.f = f

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        return self.f(x), st

    def summary(self) -> str:
        return f"WrappedFunction({activation_name(self.f)})"


class FlattenLayer(AbstractLayer):
    """Flattens axes after the batch axis, never the batch axis itself.

    ``N=None`` (default): every axis after the batch axis, ``(B, d1, ..., dk)`` →
    ``(B, d1*...*dk)``. ``N=n``: the last ``n`` axes only, ``(B, d1, ..., dk)`` →
    ``(B, d1, ..., d(k-n), d(k-n+1)*...*dk)`` — Lux's ``FlattenLayer(; N)`` flattens the first
    ``N`` Julia dims, which are the last ``N`` axes in batch-first order (``n < rank``).

    >>> import jax.numpy as jnp, luxc
    >>> luxc.nn.FlattenLayer(N=2)(jnp.ones((8, 2, 3, 4)), {}, {})[0].shape
    (8, 2, 12)
    """

    def __init__(self, *, N: int | None = None):
        if N is not None and (not isinstance(N, int) or N < 0):
            raise ValueError(f"FlattenLayer: N must be None or a non-negative int; received {N!r}")
        self.N = N

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        if self.N is None:
            self._check_rank(x, 1, "a batch axis first, (N, ...)")
            return jnp.reshape(x, (x.shape[0], -1)), st
        self._check_rank(x, self.N + 1, f"a batch axis and at least {self.N} more")
        cut = x.ndim - self.N
        return jnp.reshape(x, (*x.shape[:cut], math.prod(x.shape[cut:]))), st

    def summary(self) -> str:
        return "FlattenLayer()" if self.N is None else f"FlattenLayer(N={self.N})"


class Chain(AbstractContainerLayer):
    """Applies its layers in order; ``ps``/``st`` hold ``layer_1`` … ``layer_n``, or the names
    given as keywords (Lux's ``Chain(; encoder=..., decoder=...)``).

    Plain callables are wrapped in :class:`WrappedFunction`, as Lux does. ``chain[i]`` is the
    i-th layer (0-based), ``chain["encoder"]`` / ``chain.encoder`` a named one.

    Traced into a program (a compiled step, ``jax.jit``), a long run of one repeated
    layer (``Chain([block() for _ in range(24)])``: at least eight layers of the same type and
    configuration whose activations outweigh their parameters) becomes one ``lax.scan`` over
    its parameters stacked inside the call, as :class:`Stack` runs its block: the compiled
    step holds the block once. ``ps``/``st`` and the values are those of the layers applied in
    turn (float rounding aside); see ``luxc/nn/_chain_loop.py`` for the measurements and
    ``luxc.set_preferences(chain_loop="never")`` to keep it unrolled.

    >>> import jax, jax.numpy as jnp, luxc
    >>> model = luxc.nn.Chain(encoder=luxc.nn.Dense(4, 2), decoder=luxc.nn.Dense(2, 4))
    >>> ps, st = luxc.setup(jax.random.key(0), model)
    >>> list(ps), model.decoder.summary()
    (['encoder', 'decoder'], 'Dense(2 => 4)')
    """

    def __init__(self, *layers: AbstractLayer | Callable, name: str | None = None,
                 **named: AbstractLayer | Callable):
        if len(layers) == 1 and isinstance(layers[0], list | tuple):
            layers = tuple(layers[0])
        self._named = named_layers("Chain", layers, named, wrap=WrappedFunction)
        self.layers = tuple(self._named.values())
        self.name = name

    def sublayers(self) -> dict[str, AbstractLayer]:
        return dict(self._named)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        names, new_st = list(self._named), {}
        # Compared at each trace, not once: a layer changed after the chain was built counts.
        runs = (dict(_chain_loop.repeated_runs(list(self.layers)))
                if _chain_loop.may_loop(len(names), x, ps, st) else {})
        i = 0
        while i < len(names):
            looped = self._loop(names[i:runs[i]], x, ps, st) if i in runs else None
            if looped is None:
                x, new_st[names[i]] = self._one(names[i], x, ps, st)
                i += 1
            else:
                (x, sts), i = looped, runs[i]
                new_st.update(sts)
        return x, new_st

    def _one(self, name: str, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        try:
            # The scope names the layer in the ops' metadata: `luxc profile --ops` shows it.
            with jax.named_scope(name):
                return self._named[name](x, ps[name], st[name])
        except LayerShapeError as e:
            raise LayerShapeError(f"Chain {name}: {e}") from None

    def _loop(self, names: list[str], x: Any, ps: dict, st: dict) -> tuple[Any, dict] | None:
        # The same layers `names` as one loop when they can and it pays
        # (luxc/nn/_chain_loop.py); None: they run unrolled, and any error names its layer.
        pss, sts = [ps[k] for k in names], [st[k] for k in names]
        layer = self._named[names[0]]
        if not (_chain_loop.same_shapes(pss) and _chain_loop.same_shapes(sts)
                and _chain_loop.worth_a_loop(layer, len(names), x, pss[0], sts[0])):
            return None
        try:
            with jax.named_scope(f"{names[0]}-{names[-1]}"):
                y, sts = _chain_loop.run_as_loop(layer, x, pss, sts)
        except LayerShapeError:  # the unrolled chain raises it again, naming the layer, or runs
            return None
        return y, dict(zip(names, sts))

    def summary(self) -> str:
        return self.name or "Chain(...)"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int | str) -> AbstractLayer:
        return self._named[i] if isinstance(i, str) else self.layers[i]

    def __getattr__(self, name: str) -> AbstractLayer:
        named = self.__dict__.get("_named", {})
        if name in named:
            return named[name]
        raise AttributeError(f"Chain has no layer or attribute {name!r}")
