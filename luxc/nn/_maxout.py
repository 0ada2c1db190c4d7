"""Maxout: the element-wise maximum of several layers applied to the same input (Lux's
``Maxout``, ``src/layers/containers.jl``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from luxc.nn._core import AbstractContainerLayer, AbstractLayer


class Maxout(AbstractContainerLayer):
    r"""``y = max(l_1(x), …, l_n(x))`` element-wise (Goodfellow et al. 2013).

    Three forms, as Lux: ``Maxout(l1, l2, …)`` (``ps``/``st`` hold ``layer_1`` … ``layer_n``),
    ``Maxout(a=l1, b=l2)`` (named by the keywords) and ``Maxout(constructor, n)`` (``n`` layers
    ``constructor()``, each with its own parameters). The outputs must have one shape.

    >>> import jax, jax.numpy as jnp, luxc
    >>> mo = luxc.nn.Maxout(lambda: luxc.nn.Dense(3, 2), 4)
    >>> ps, st = luxc.setup(jax.random.key(0), mo)
    >>> sorted(ps), mo(jnp.ones((5, 3)), ps, st)[0].shape
    (['layer_1', 'layer_2', 'layer_3', 'layer_4'], (5, 2))
    """

    def __init__(self, *layers: AbstractLayer | Callable | int, **named: AbstractLayer):
        if len(layers) == 2 and isinstance(layers[1], int) and not isinstance(
                layers[0], AbstractLayer):
            constructor, n = layers
            if not callable(constructor) or n < 1:
                raise ValueError(f"Maxout: the (constructor, n) form needs a function making a "
                                 f"layer and n ≥ 1; received ({constructor!r}, {n})")
            layers = tuple(constructor() for _ in range(n))
        if layers and named:
            raise ValueError("Maxout: give the layers positionally or by name, not both")
        table = named or {f"layer_{i + 1}": layer for i, layer in enumerate(layers)}
        if not table:
            raise ValueError("Maxout: needs at least one layer")
        for name, layer in table.items():
            if not isinstance(layer, AbstractLayer):
                raise TypeError(f"Maxout: {name} must be a luxc layer; received "
                                f"{type(layer).__name__}")
        self.layers = dict(table)

    def sublayers(self) -> dict[str, AbstractLayer]:
        return self.layers

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        ys, new_st = [], {}
        for name, layer in self.layers.items():
            y, new_st[name] = layer(x, ps[name], st[name])
            ys.append(y)
        return functools.reduce(jnp.maximum, ys), new_st

    def summary(self) -> str:
        return f"Maxout({len(self.layers)} layers)"
