"""SkipConnection and Parallel, Lux's containers that join several paths (src/layers/containers.jl)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from luxc.nn._core import AbstractContainerLayer, AbstractLayer


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


class Parallel(AbstractContainerLayer):
    r"""Passes the input to every layer and joins the outputs with ``connection``.

    ``Parallel(connection, l1, …, ln)(x) = connection(l1(x), …, ln(x))``; when ``x`` is a
    tuple of ``n`` inputs, layer ``i`` receives ``x[i]``; ``connection=None`` returns the tuple
    of outputs. As Lux: ``ps``/``st`` hold ``layer_1`` … ``layer_n``; when ``connection`` is a
    luxc layer it receives the tuple of outputs and ``ps``/``st`` hold ``layers`` (with
    ``layer_1`` …) and ``connection``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> par = luxc.nn.Parallel(jnp.add, luxc.nn.Dense(2, 3), luxc.nn.Dense(2, 3))
    >>> ps, st = luxc.setup(jax.random.key(0), par)
    >>> par(jnp.ones((4, 2)), ps, st)[0].shape
    (4, 3)
    """

    def __init__(self, connection: Callable | AbstractLayer | None, *layers: AbstractLayer,
                 name: str | None = None):
        if not layers:
            raise ValueError("Parallel: give at least one layer after the connection")
        if connection is not None and not callable(connection):
            raise TypeError("Parallel: connection must be None, a function or a luxc layer; "
                            f"received {type(connection).__name__}")
        self.layers = tuple(_check_layer("Parallel", f"layer {i + 1}", layer)
                            for i, layer in enumerate(layers))
        self.connection, self.name = connection, name
        self._nested = isinstance(connection, AbstractLayer)

    def _branches(self) -> dict[str, AbstractLayer]:
        return {f"layer_{i + 1}": layer for i, layer in enumerate(self.layers)}

    def sublayers(self) -> dict[str, AbstractLayer]:
        return {**self._branches(), **({"connection": self.connection} if self._nested else {})}

    def init_parameters(self, key: jax.Array) -> dict:
        if not self._nested:
            return super().init_parameters(key)
        kl, kc = jax.random.split(key)
        branches = _Branches(self._branches())
        return {"layers": branches.init_parameters(kl),
                "connection": self.connection.init_parameters(kc)}

    def init_states(self, key: jax.Array) -> dict:
        if not self._nested:
            return super().init_states(key)
        kl, kc = jax.random.split(key)
        return {"layers": _Branches(self._branches()).init_states(kl),
                "connection": self.connection.init_states(kc)}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        n = len(self.layers)
        if isinstance(x, tuple) and len(x) != n:
            raise ValueError(f"{self.summary()}: a tuple input needs one element per layer "
                             f"({n}); received {len(x)}")
        xs = x if isinstance(x, tuple) else (x,) * n
        lps, lst = (ps["layers"], st["layers"]) if self._nested else (ps, st)
        ys, new_st = [], {}
        for (name, layer), xi in zip(self._branches().items(), xs):
            y, new_st[name] = layer(xi, lps[name], lst[name])
            ys.append(y)
        if self.connection is None:
            return tuple(ys), new_st
        if not self._nested:
            return self.connection(*ys), new_st
        y, cst = self.connection(tuple(ys), ps["connection"], st["connection"])
        return y, {"layers": new_st, "connection": cst}

    def summary(self) -> str:
        return self.name or f"Parallel({_name(self.connection)}, ...)"


class _Branches(AbstractContainerLayer):
    """The ``layers`` level of a Parallel whose connection is a layer (parameters only)."""

    def __init__(self, layers: dict[str, AbstractLayer]):
        self._layers = layers

    def sublayers(self) -> dict[str, AbstractLayer]:
        return self._layers


def _name(fn: Any) -> str:
    if isinstance(fn, AbstractLayer):
        return fn.summary()
    return getattr(fn, "__name__", repr(fn))

