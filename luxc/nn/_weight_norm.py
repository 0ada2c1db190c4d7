"""WeightNorm: a layer's parameters re-parameterised as magnitude × direction (Lux's
``WeightNorm``, ``src/layers/normalize.jl``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._core import AbstractLayer

Axes = int | Sequence[int] | None


def _norm_except(v: jax.Array, keep: tuple[int, ...]) -> jax.Array:
    """The 2-norm of ``v`` over every axis not in ``keep``, keeping all axes (size 1)."""
    axes = tuple(i for i in range(v.ndim) if i not in keep)
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


def _all_zero(v: jax.Array) -> bool:
    try:
        return not np.any(np.asarray(v))
    except jax.errors.TracerArrayConversionError:  # parameter_count traces: values unknown
        return False


class WeightNorm(AbstractLayer):
    r"""Weight normalisation of the parameters ``which_params`` of ``layer``:

    .. math::
        w = g \, \frac{v}{\lVert v \rVert + \varepsilon}

    with :math:`\lVert v \rVert` taken over every axis of ``v`` except those ``dims`` keeps,
    and :math:`\varepsilon` the machine epsilon of ``v``'s dtype (as Lux). At ``setup``,
    :math:`v` is the layer's initial parameter and :math:`g = \lVert v \rVert`, so the
    wrapped layer starts with its own initial weights.

    Args:
        layer: a layer whose parameters are arrays named in ``which_params``.
        which_params: the names to normalise, e.g. ``("weight",)``.
        dims: ``None`` (default): each norm is over the whole array (:math:`g` has one
            element) — Lux's docstring; Lux's code instead keeps the last Julia axis (see
            the Lux table in ``docs/layers/normalization.md``). Otherwise one entry per name:
            the axis or axes of that parameter (luxc's layout, 0-based) the norm keeps; for
            a Dense ``weight (out, in)``, ``0`` gives one magnitude per output (Lux's
            ``dims=(1,)``).

    Parameters: ``normalized`` holding ``<name>_g`` (the magnitudes, the shape of ``v`` with
    size 1 on the normed axes) and ``<name>_v`` for each name, in the layer's order, and
    ``unnormalized`` holding the layer's other parameters. State: the layer's.

    >>> import jax, jax.numpy as jnp, luxc
    >>> wn = luxc.nn.WeightNorm(luxc.nn.Dense(3, 2), ("weight",), (0,))
    >>> ps, st = luxc.setup(jax.random.key(0), wn)
    >>> {k: v.shape for k, v in ps["normalized"].items()}, sorted(ps["unnormalized"])
    ({'weight_g': (2, 1), 'weight_v': (2, 3)}, ['bias'])
    """

    def __init__(self, layer: AbstractLayer, which_params: str | Sequence[str],
                 dims: Sequence[Axes] | None = None):
        if not isinstance(layer, AbstractLayer):
            raise TypeError(f"WeightNorm: layer must be a luxc layer; received "
                            f"{type(layer).__name__}")
        names = (which_params,) if isinstance(which_params, str) else tuple(which_params)
        shapes = jax.eval_shape(layer.init_parameters, jax.random.key(0))
        for n in names:
            if not isinstance(shapes.get(n) if isinstance(shapes, dict) else None,
                              jax.ShapeDtypeStruct):
                arrays = [k for k, v in shapes.items() if isinstance(v, jax.ShapeDtypeStruct)]
                raise ValueError(f"WeightNorm: which_params names {n!r}, which is not an array "
                                 f"parameter of {layer.summary()}; its arrays are {arrays}")
        if dims is not None and len(dims) != len(names):
            raise ValueError(f"WeightNorm: dims needs one entry per name in which_params "
                             f"{names}; received {dims!r}")
        self.layer, self.which_params, self.dims = layer, names, dims
        self._keep = {n: self._kept(n, shapes[n].ndim, i) for i, n in enumerate(names)}

    def _kept(self, name: str, ndim: int, i: int) -> tuple[int, ...]:
        if self.dims is None or self.dims[i] is None:
            return ()
        d = self.dims[i]
        axes = (d,) if isinstance(d, int) else tuple(d)
        if not all(isinstance(a, int) and -ndim <= a < ndim for a in axes):
            raise ValueError(f"WeightNorm: dims[{i}] must be axes of {name!r} (rank {ndim}); "
                             f"received {d!r}")
        return tuple(sorted(a % ndim for a in axes))

    def init_parameters(self, key: jax.Array) -> dict:
        ps = self.layer.init_parameters(key)
        normalized, unnormalized = {}, {}
        for k, v in ps.items():
            if k not in self.which_params:
                unnormalized[k] = v
                continue
            if _all_zero(v):
                raise ValueError(
                    f"WeightNorm: parameter {k!r} of {self.layer.summary()} is all zeros, which "
                    f"gives NaN gradients; remove it from which_params or give the layer a "
                    f"non-zero init_{k}")
            normalized[f"{k}_g"] = _norm_except(v, self._keep[k])
            normalized[f"{k}_v"] = v
        return {"normalized": normalized, "unnormalized": unnormalized}

    def init_states(self, key: jax.Array) -> dict:
        return self.layer.init_states(key)

    def parameters_of_layer(self, ps: dict) -> dict:
        """The wrapped layer's parameters, :math:`w = g v / (\\lVert v \\rVert + \\varepsilon)`."""
        out: dict[str, Any] = dict(ps["unnormalized"])
        for n in self.which_params:
            v, g = ps["normalized"][f"{n}_v"], ps["normalized"][f"{n}_g"]
            out[n] = v * (g / (_norm_except(v, self._keep[n]) + jnp.finfo(v.dtype).eps))
        return out

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        return self.layer(x, self.parameters_of_layer(ps), st)

    def summary(self) -> str:
        dims = "" if self.dims is None else f", dims={tuple(self.dims)!r}"
        return f"WeightNorm({self.layer.summary()}, {self.which_params!r}{dims})"
