"""SkipConnection, Parallel, BranchLayer and PairwiseFusion: Lux's containers that join several
paths (src/layers/containers.jl)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from luxc.nn import _draws
from luxc.nn._core import AbstractContainerLayer, AbstractLayer, named_layers


def _check_layer(owner: str, what: str, layer: Any) -> AbstractLayer:
    if not isinstance(layer, AbstractLayer):
        raise TypeError(f"{owner}: {what} must be a luxc layer; received {type(layer).__name__}")
    return layer


class SkipConnection(AbstractContainerLayer):
    r"""``connection(layer(x), x)``; ``SkipConnection(layer, jnp.add)`` is a residual block.

    As Lux: when ``connection`` is a function, ``ps``/``st`` are those of ``layer`` itself
    (the wrapper adds no level); when ``connection`` is a luxc layer it receives the tuple
    ``(layer(x), x)`` and ``ps``/``st`` hold ``layers`` and ``connection``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> block = luxc.nn.SkipConnection(luxc.nn.Dense(3, 3), jnp.add)
    >>> ps, st = luxc.setup(jax.random.key(0), block)
    >>> sorted(ps)
    ['bias', 'weight']
    """

    def __init__(self, layer: AbstractLayer, connection: Callable | AbstractLayer,
                 *, name: str | None = None):
        self.layers = _check_layer("SkipConnection", "layer", layer)
        if not callable(connection):
            raise TypeError("SkipConnection: connection must be a function of two arguments "
                            f"or a luxc layer; received {type(connection).__name__}")
        self.connection, self.name = connection, name
        self._nested = isinstance(connection, AbstractLayer)

    def sublayers(self) -> dict[str, AbstractLayer]:
        if self._nested:
            return {"layers": self.layers, "connection": self.connection}
        return {"layers": self.layers}

    def init_parameters(self, key: jax.Array) -> dict:
        return super().init_parameters(key) if self._nested else self.layers.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return super().init_states(key) if self._nested else self.layers.init_states(key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        if not self._nested:
            mx, st = self.layers(x, ps, st)
            return self.connection(mx, x), st
        mx, st1 = self.layers(x, ps["layers"], st["layers"])
        y, st2 = self.connection((mx, x), ps["connection"], st["connection"])
        return y, {"layers": st1, "connection": st2}

    def summary(self) -> str:
        return self.name or f"SkipConnection({self.layers.summary()}, {_name(self.connection)})"


class _Joined(AbstractContainerLayer):
    """Layers whose outputs are joined: the common part of Parallel and BranchLayer.

    Without a joiner the outputs are returned as a tuple; a function joiner is called on them
    (``_SPLAT``: as separate arguments, else as one tuple); a layer joiner receives the tuple
    and ``ps``/``st`` then hold ``layers`` and the joiner's entry (``_JOINER``).
    """

    _JOINER = "connection"
    _SPLAT = True
    _SPLIT_TUPLE = True

    def _setup(self, joiner: Any, layers: tuple, named: dict, name: str | None) -> None:
        owner = type(self).__name__
        if not layers and not named:
            raise ValueError(f"{owner}: give at least one layer")
        if joiner is not None and not callable(joiner):
            raise TypeError(f"{owner}: {self._JOINER} must be None, a function or a luxc "
                            f"layer; received {type(joiner).__name__}")
        self._named = named_layers(owner, layers, named)
        self.layers = tuple(self._named.values())
        self._joiner, self.name = joiner, name
        self._nested = isinstance(joiner, AbstractLayer)

    def sublayers(self) -> dict[str, AbstractLayer]:
        return {**self._named, **({self._JOINER: self._joiner} if self._nested else {})}

    def _init(self, key: jax.Array, kind: str) -> dict:
        if not self._nested:
            return getattr(super(), kind)(key)
        kl, kc = _draws.split(key)
        return {"layers": getattr(_Branches(self._named), kind)(kl),
                self._JOINER: getattr(self._joiner, kind)(kc)}

    def init_parameters(self, key: jax.Array) -> dict:
        return self._init(key, "init_parameters")

    def init_states(self, key: jax.Array) -> dict:
        return self._init(key, "init_states")

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        n = len(self.layers)
        split = self._SPLIT_TUPLE and isinstance(x, tuple)
        if split and len(x) != n:
            raise ValueError(f"{self.summary()}: a tuple input needs one element per layer "
                             f"({n}); received {len(x)}")
        xs = x if split else (x,) * n
        lps, lst = (ps["layers"], st["layers"]) if self._nested else (ps, st)
        ys, new_st = [], {}
        for (name, layer), xi in zip(self._named.items(), xs):
            y, new_st[name] = layer(xi, lps[name], lst[name])
            ys.append(y)
        if self._joiner is None:
            return tuple(ys), new_st
        if not self._nested:
            return (self._joiner(*ys) if self._SPLAT else self._joiner(tuple(ys))), new_st
        key = self._JOINER
        y, jst = self._joiner(tuple(ys), ps[key], st[key])
        return y, {"layers": new_st, key: jst}


class Parallel(_Joined):
    r"""Passes the input to every layer and joins the outputs with ``connection``.

    ``Parallel(connection, l1, …, ln)(x) = connection(l1(x), …, ln(x))``; when ``x`` is a
    tuple of ``n`` inputs, layer ``i`` receives ``x[i]``; ``connection=None`` returns the tuple
    of outputs. As Lux: ``ps``/``st`` hold ``layer_1`` … ``layer_n`` (or the keyword names of
    ``Parallel(connection, left=..., right=...)``); when ``connection`` is a
    luxc layer it receives the tuple of outputs and ``ps``/``st`` hold ``layers`` (with
    ``layer_1`` …) and ``connection``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> par = luxc.nn.Parallel(jnp.add, luxc.nn.Dense(2, 3), luxc.nn.Dense(2, 3))
    >>> ps, st = luxc.setup(jax.random.key(0), par)
    >>> par(jnp.ones((4, 2)), ps, st)[0].shape
    (4, 3)
    """

    def __init__(self, connection: Callable | AbstractLayer | None, *layers: AbstractLayer,
                 name: str | None = None, **named: AbstractLayer):
        self._setup(connection, layers, named, name)
        self.connection = connection

    def summary(self) -> str:
        return self.name or f"Parallel({_name(self.connection)}, ...)"


class BranchLayer(_Joined):
    r"""Passes the same input to every layer: ``(l1(x), …, ln(x))``, or
    ``fusion((l1(x), …, ln(x)))`` when a ``fusion`` is given.

    Unlike :class:`Parallel`, a tuple input is not split: every layer receives all of ``x``.
    As Lux: ``ps``/``st`` hold ``layer_1`` … ``layer_n`` (or the keyword names); when ``fusion``
    is a luxc layer they hold ``layers`` and ``fusion``. A function ``fusion`` receives the
    tuple of outputs, as Lux's docstring says (Lux's code splats it into arguments): ``sum``
    adds the branches.

    >>> import jax, jax.numpy as jnp, luxc
    >>> branch = luxc.nn.BranchLayer(luxc.nn.Dense(2, 3), luxc.nn.Dense(2, 3), fusion=sum)
    >>> ps, st = luxc.setup(jax.random.key(0), branch)
    >>> branch(jnp.ones((4, 2)), ps, st)[0].shape
    (4, 3)
    """

    _JOINER, _SPLAT, _SPLIT_TUPLE = "fusion", False, False

    def __init__(self, *layers: AbstractLayer, fusion: Callable | AbstractLayer | None = None,
                 name: str | None = None, **named: AbstractLayer):
        self._setup(fusion, layers, named, name)
        self.fusion = fusion

    def summary(self) -> str:
        return self.name or "BranchLayer(...)"


class PairwiseFusion(AbstractContainerLayer):
    r"""Each layer's output joined with the next input, Lux's ``PairwiseFusion``:

    .. math::
        y_0 = x_1,\qquad y_i = \mathrm{connection}(x_{i+1},\ \mathrm{layer}_i(y_{i-1})),
        \quad i = 1 \ldots N

    for a tuple input ``(x_1, …, x_{N+1})``; any other input ``x`` plays every :math:`x_i`.
    The argument order is Lux's docstring's (Lux's code passes the layer output first; it
    matters only for a connection that is not symmetric). ``ps``/``st`` hold ``layer_1`` …
    ``layer_n`` (or the keyword names).

    >>> import jax, jax.numpy as jnp, luxc
    >>> fuse = luxc.nn.PairwiseFusion(jnp.add, luxc.nn.Dense(2, 2), luxc.nn.Dense(2, 2))
    >>> ps, st = luxc.setup(jax.random.key(0), fuse)
    >>> xs = (jnp.ones((4, 2)), jnp.zeros((4, 2)), jnp.ones((4, 2)))
    >>> fuse(xs, ps, st)[0].shape
    (4, 2)
    """

    def __init__(self, connection: Callable, *layers: AbstractLayer, name: str | None = None,
                 **named: AbstractLayer):
        if not callable(connection) or isinstance(connection, AbstractLayer):
            raise TypeError("PairwiseFusion: connection must be a function of two arrays; "
                            f"received {type(connection).__name__}")
        self._named = named_layers("PairwiseFusion", layers, named)
        if not self._named:
            raise ValueError("PairwiseFusion: give at least one layer")
        self.layers = tuple(self._named.values())
        self.connection, self.name = connection, name

    def sublayers(self) -> dict[str, AbstractLayer]:
        return dict(self._named)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        n = len(self.layers)
        if isinstance(x, tuple) and len(x) != n + 1:
            raise ValueError(f"{self.summary()}: a tuple input needs one more element than "
                             f"there are layers ({n + 1}); received {len(x)}")
        xs = x if isinstance(x, tuple) else (x,) * (n + 1)
        y, new_st = xs[0], {}
        for (name, layer), xi in zip(self._named.items(), xs[1:]):
            out, new_st[name] = layer(y, ps[name], st[name])
            y = self.connection(xi, out)
        return y, new_st

    def summary(self) -> str:
        return self.name or f"PairwiseFusion({_name(self.connection)}, ...)"


class _Branches(AbstractContainerLayer):
    """The ``layers`` level of a Parallel or BranchLayer whose joiner is a layer."""

    def __init__(self, layers: dict[str, AbstractLayer]):
        self._layers = layers

    def sublayers(self) -> dict[str, AbstractLayer]:
        return self._layers


def _name(fn: Any) -> str:
    if isinstance(fn, AbstractLayer):
        return fn.summary()
    return getattr(fn, "__name__", repr(fn))

