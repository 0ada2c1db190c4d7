"""Dropout, AlphaDropout and VariationalHiddenDropout (Lux's ``src/layers/dropout.jl``), with
their random key in the state so that a step is a pure function.

All three keep ``rng`` (raw key data, ``uint32[2]``) and ``training`` in the state, are the
identity under ``luxc.testmode(st)``, and split the key whenever they draw a mask (Dropout and
AlphaDropout on every training call, VariationalHiddenDropout when its mask is renewed)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from luxc.nn._core import AbstractLayer, LayerShapeError, Val


def _split(st: dict) -> tuple[jax.Array, jax.Array]:
    return jax.random.split(jax.random.wrap_key_data(st["rng"]))


def _mask_shape(x: jax.Array, dims: tuple[int, ...] | None) -> tuple[int, ...]:
    if dims is None:
        return x.shape
    keep = {d % x.ndim for d in dims}
    return tuple(s if i in keep else 1 for i, s in enumerate(x.shape))


def _dims(dims: int | Sequence[int] | None) -> tuple[int, ...] | None:
    return (dims,) if isinstance(dims, int) else (None if dims is None else tuple(dims))


def _random_state(key: jax.Array) -> dict:
    # Raw key data (uint32[2]) rather than a typed key: it survives export and checkpoints.
    return {"rng": jax.random.key_data(key), "training": Val(True)}


class Dropout(AbstractLayer):
    r"""Zeroes each element with probability ``p`` in training mode and scales the rest by
    :math:`1/(1-p)`; the identity in test mode.

    State: ``rng`` (a jax random key, split on every call so two calls draw different masks and
    the same state always draws the same mask) and ``training``.

    Args:
        p: drop probability in ``[0, 1)``.
        dims: axes along which the mask varies (it is broadcast along the others);
            ``None`` (default) draws an independent mask per element.
    """

    def __init__(self, p: float, *, dims: int | Sequence[int] | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1); received {p}")
        self.p, self.dims = p, _dims(dims)

    def init_states(self, key: jax.Array) -> dict:
        return _random_state(key)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        if not st["training"] or self.p == 0.0:
            return x, st
        rng, sub = _split(st)
        mask = jax.random.bernoulli(sub, 1.0 - self.p, _mask_shape(x, self.dims))
        y = jnp.where(mask, x / (1.0 - self.p), jnp.zeros((), x.dtype))
        return y.astype(x.dtype), {**st, "rng": jax.random.key_data(rng)}

    def summary(self) -> str:
        return f"Dropout({self.p})"


# SELU's negative saturation value, -λα (Klambauer et al. 2017; LuxLib's alpha_dropout).
_SELU_ALPHA = -1.7580993408473766


class AlphaDropout(AbstractLayer):
    r"""Dropout that keeps a SELU network's mean and variance (Klambauer et al. 2017). In
    training mode each element is kept with probability :math:`1-p` and otherwise set to
    SELU's saturation value :math:`\alpha' = -\lambda\alpha \approx -1.7581`; then

    .. math::
        y = A\,\tilde x + B, \quad A = ((1-p)(1 + p\,\alpha'^2))^{-1/2},
        \quad B = -A\,\alpha'\,p,

    so an input of mean 0 and variance 1 keeps them. The identity in test mode.

    Args:
        p: drop probability in ``[0, 1]``; ``p = 0`` is the identity, ``p = 1`` gives zeros
            (Lux returns a ``NoOpLayer`` / a zeroing ``WrappedFunction`` instead).

    State: ``rng`` and ``training``, as :class:`Dropout`. Input: any float array.
    """

    def __init__(self, p: float):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"AlphaDropout: p must be in [0, 1]; received {p}")
        self.p = p
        a = _SELU_ALPHA
        self.scale = 0.0 if p == 1.0 else 1.0 / math.sqrt((1.0 - p) * (1.0 + p * a * a))
        self.bias = -self.scale * a * p

    def init_states(self, key: jax.Array) -> dict:
        return _random_state(key)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        if not st["training"] or self.p == 0.0:
            return x, st
        rng, sub = _split(st)
        keep = jax.random.uniform(sub, x.shape) > self.p  # LuxLib: noise > p keeps
        y = jnp.where(keep, x, jnp.asarray(_SELU_ALPHA, x.dtype)) * self.scale + self.bias
        return y.astype(x.dtype), {**st, "rng": jax.random.key_data(rng)}

    def summary(self) -> str:
        return f"AlphaDropout({self.p})"


class VariationalHiddenDropout(AbstractLayer):
    r"""Dropout whose mask is drawn once and reused on every later call until it is reset
    (variational dropout of a recurrent hidden state): :math:`y = x \odot m`,
    :math:`m \in \{0, 1/(1-p)\}`.

    State: ``rng``, ``training``, ``update_mask`` (``Val(True)`` at setup) and ``mask``
    (``None`` at setup). A training call with ``update_mask`` true draws a new mask, stores it
    and sets ``update_mask`` to ``Val(False)``; later calls reuse the stored mask. Reset as
    Lux, with ``luxc.nn.update_state(st, "update_mask", luxc.nn.Val(True))``. Because the mask
    appears after the first call, the state's structure changes once: a compiled step
    compiles a second program then (and once more after a reset), and ``train_steps`` or an
    exported artifact need a state that already holds its mask (run one step first).
    Test mode is the identity and leaves the state unchanged.

    Args:
        p: drop probability in ``[0, 1)``.
        dims: axes along which the mask varies (broadcast along the others), as
            :class:`Dropout`; ``None`` draws one value per element.

    >>> import jax, jax.numpy as jnp, luxc
    >>> vd = luxc.nn.VariationalHiddenDropout(0.5)
    >>> ps, st = luxc.setup(jax.random.key(0), vd)
    >>> y1, st = vd(jnp.ones((2, 4)), ps, st)
    >>> y2, st = vd(jnp.ones((2, 4)), ps, st)
    >>> bool((y1 == y2).all()), bool(st["update_mask"])
    (True, False)
    """

    def __init__(self, p: float, *, dims: int | Sequence[int] | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"VariationalHiddenDropout: p must be in [0, 1); received {p}")
        self.p, self.dims = p, _dims(dims)

    def init_states(self, key: jax.Array) -> dict:
        return {**_random_state(key), "update_mask": Val(True), "mask": None}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        if not st["training"]:
            return x, st
        if st["update_mask"] or st["mask"] is None:
            rng, sub = _split(st)
            keep = jax.random.bernoulli(sub, 1.0 - self.p, _mask_shape(x, self.dims))
            dtype = jnp.result_type(x.dtype, jnp.float32)  # float32 at least: same under bf16
            mask = jnp.where(keep, 1.0 / (1.0 - self.p), 0.0).astype(dtype)
            st = {**st, "rng": jax.random.key_data(rng), "mask": mask, "update_mask": Val(False)}
        mask = st["mask"]
        fits = mask.ndim == x.ndim and all(m in (1, n) for m, n in zip(mask.shape, x.shape))
        if not fits:
            raise LayerShapeError(
                f"{self.summary()}: the stored mask of shape {mask.shape} does not fit an input "
                f"of shape {x.shape}; reset it with update_state(st, 'update_mask', Val(True))")
        return (x * mask).astype(x.dtype), st

    def summary(self) -> str:
        dims = "" if self.dims is None else f", dims={self.dims}"
        return f"VariationalHiddenDropout({self.p}{dims})"
