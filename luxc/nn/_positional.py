"""Positional embeddings: Lux's ``SinusoidalPositionalEmbedding``, ``RotaryPositionalEmbedding``
and its functional parts ``compute_rotary_embedding_params`` / ``apply_rotary_embedding``
(src/layers/embedding.jl). Both keep their tables in the state (nothing to train)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._core import AbstractLayer, LayerShapeError


def _positive_int(owner: str, name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int; received {value!r}")
    return value


class SinusoidalPositionalEmbedding(AbstractLayer):
    r"""Sinusoidal embedding of (possibly fractional) positions (Vaswani et al. 2017).

    .. math::
        \sigma_j = \exp\!\big(\log f_{\max} - \tfrac{j}{n-1}(\log f_{\max} - \log f_{\min})\big),
        \quad j = 0 \ldots n-1,\; n = \lfloor \mathrm{dims}/2 \rfloor

        y[\ldots, :] = s\,[\sin(x\sigma_0), \ldots, \sin(x\sigma_{n-1}),
                           \cos(x\sigma_0), \ldots, \cos(x\sigma_{n-1})]

    with :math:`\sigma` multiplied by :math:`2\pi` when ``full_turns``.

    Args:
        dims: length of each embedding (an odd ``dims`` gives ``dims - 1`` values, as Lux).
        min_freq, max_freq: the frequency range (Lux's defaults ``1e-4`` and ``1``).
        scale: factor on the output; ``None`` is Lux's :math:`\sqrt{2/\mathrm{dims}}`.
        full_turns: multiply the frequencies by :math:`2\pi`.

    State: ``sigmas`` of shape ``(dims // 2,)``. Input: any shape ``S`` (positions, cast to
    float32) → output ``S + (2 * (dims // 2),)`` (Lux's ``(dims, S...)`` with the feature axis
    last).

    >>> import jax, jax.numpy as jnp, luxc
    >>> pe = luxc.nn.SinusoidalPositionalEmbedding(8)
    >>> ps, st = luxc.setup(jax.random.key(0), pe)
    >>> pe(jnp.arange(5), ps, st)[0].shape
    (5, 8)
    """

    def __init__(self, dims: int, *, min_freq: float = 1e-4, max_freq: float = 1.0,
                 scale: float | None = None, full_turns: bool = False):
        self.dims = _positive_int("SinusoidalPositionalEmbedding", "dims", dims)
        if not 0 < min_freq <= max_freq:
            raise ValueError("SinusoidalPositionalEmbedding: need 0 < min_freq <= max_freq; "
                             f"received min_freq={min_freq!r}, max_freq={max_freq!r}")
        self.min_freq, self.max_freq, self.full_turns = min_freq, max_freq, bool(full_turns)
        self.scale = math.sqrt(2 / dims) if scale is None else float(scale)

    def init_states(self, key: jax.Array) -> dict:
        lo, hi = np.log(np.float32(self.min_freq)), np.log(np.float32(self.max_freq))
        one_zero = np.linspace(1.0, 0.0, self.dims // 2, dtype=np.float32)
        sigmas = np.exp(one_zero * (hi - lo) + lo)
        if self.full_turns:
            sigmas = sigmas * np.float32(2 * np.pi)
        return {"sigmas": jnp.asarray(sigmas, jnp.float32)}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        sigmas = st["sigmas"]
        dtype = jnp.result_type(x)
        x = jnp.asarray(x, sigmas.dtype if not jnp.issubdtype(dtype, jnp.floating) else dtype)
        y = x[..., None] * sigmas.astype(x.dtype)
        return jnp.concatenate([jnp.sin(y), jnp.cos(y)], axis=-1) * self.scale, st

    def summary(self) -> str:
        return f"SinusoidalPositionalEmbedding({self.dims})"


def compute_rotary_embedding_params(head_dim: int, max_sequence_length: int = 4096, *,
                                    base: float = 10000, dtype: Any = jnp.float32,
                                    low_memory_variant: bool = True) -> dict[str, jax.Array]:
    r"""The cosine and sine tables of rotary embeddings (Lux's function of the same name).

    .. math::
        \theta_j = \mathrm{base}^{-2j/\mathrm{head\_dim}},\qquad
        \mathrm{cos\_cache}[t, j] = \cos(t\,\theta_j),\;
        \mathrm{sin\_cache}[t, j] = \sin(t\,\theta_j),\quad j < \mathrm{head\_dim}/2

    Returns ``{"cos_cache", "sin_cache"}`` of shape ``(max_sequence_length, head_dim // 2)``,
    or ``(max_sequence_length, head_dim)`` (the table repeated) when not
    ``low_memory_variant`` — Lux's ``(head_dim, max_sequence_length)`` transposed for
    row-major, position-first lookup.
    """
    _positive_int("compute_rotary_embedding_params", "head_dim", head_dim)
    _positive_int("compute_rotary_embedding_params", "max_sequence_length", max_sequence_length)
    half = head_dim // 2
    theta = 1.0 / np.asarray(float(base) ** (np.arange(0, 2 * half, 2) / head_dim))
    angles = np.arange(max_sequence_length, dtype=np.float64)[:, None] * theta[None, :]
    if not low_memory_variant:
        angles = np.concatenate([angles, angles], axis=1)
    return {"cos_cache": jnp.asarray(np.cos(angles), dtype),
            "sin_cache": jnp.asarray(np.sin(angles), dtype)}


def _cache_for(cache: jax.Array, positions: Any, seq_dim: int, ndim: int) -> jax.Array:
    rows = jnp.take(cache, jnp.asarray(positions), axis=0)  # (seq, c)
    shape = [1] * ndim
    shape[seq_dim], shape[-1] = rows.shape
    return jnp.reshape(rows, shape)


def apply_rotary_embedding(x: jax.Array, *args: Any, seq_dim: int = 1) -> jax.Array:
    r"""Rotate the feature pairs ``(x[..., j], x[..., j + D/2])`` of ``x`` by the angles of the
    tables (Lux's ``apply_rotary_embedding``, the "rotate half" layout):

    .. math::
        y_{<} = x_{<}\cos - x_{>}\sin,\qquad y_{>} = x_{>}\cos + x_{<}\sin

    Called as ``apply_rotary_embedding(x, cos_cache, sin_cache, seq_dim=1)`` (positions
    ``0 … T-1``) or ``apply_rotary_embedding(x, input_positions, cos_cache, sin_cache,
    seq_dim=1)`` (0-based positions, one per step of the sequence axis). ``x`` is 4-D,
    ``(batch, seq, heads, head_dim)`` by default: Lux's ``(head_dim, heads, seq, batch)``
    reversed, so Lux's ``seq_dim=3`` is ``seq_dim=1`` here; the feature axis is last and
    cannot be the sequence axis. The tables come from :func:`compute_rotary_embedding_params`
    with ``head_dim`` (or ``head_dim // 2``, the low-memory variant) columns.
    """
    if len(args) == 2:
        (cos_cache, sin_cache), positions = args, None
    elif len(args) == 3:
        positions, cos_cache, sin_cache = args
    else:
        raise TypeError("apply_rotary_embedding(x, cos_cache, sin_cache) or "
                        "(x, input_positions, cos_cache, sin_cache)")
    if jnp.ndim(x) != 4 or seq_dim not in (0, 1, 2):
        raise LayerShapeError("apply_rotary_embedding: x must be 4-D with the features last and "
                              f"seq_dim in 0, 1, 2; received shape {jnp.shape(x)}, "
                              f"seq_dim={seq_dim}")
    d, t = x.shape[-1], x.shape[seq_dim]
    if cos_cache.shape != sin_cache.shape or cos_cache.shape[-1] not in (d, d // 2):
        raise LayerShapeError(f"apply_rotary_embedding: the tables must both have {d} or "
                              f"{d // 2} columns for head_dim {d}; received "
                              f"{cos_cache.shape} and {sin_cache.shape}")
    if t > cos_cache.shape[0]:
        raise LayerShapeError(f"apply_rotary_embedding: the sequence ({t}) is longer than the "
                              f"tables ({cos_cache.shape[0]} positions); raise "
                              "max_sequence_length")
    positions = jnp.arange(t) if positions is None else positions
    if jnp.shape(positions) != (t,):
        raise LayerShapeError(f"apply_rotary_embedding: input_positions must have one entry per "
                              f"step ({t},); received shape {jnp.shape(positions)}")
    cos = _cache_for(cos_cache, positions, seq_dim, 4).astype(x.dtype)
    sin = _cache_for(sin_cache, positions, seq_dim, 4).astype(x.dtype)
    if cos.shape[-1] == d and d > 1:  # the full tables hold each angle twice
        cos, sin = cos[..., : d // 2], sin[..., : d // 2]
    x1, x2 = x[..., : d // 2], x[..., d // 2: 2 * (d // 2)]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * (d // 2):]],
                           axis=-1)


class RotaryPositionalEmbedding(AbstractLayer):
    r"""Rotary positional embedding (Su et al., RoFormer), applied to queries or keys laid out
    ``(batch, seq, heads, head_dim)``; see :func:`apply_rotary_embedding` for the formula.

    Args:
        dim: how many leading features of the last axis are rotated; the rest pass unchanged
            (Lux's docstring; Lux's code requires the last axis to be exactly ``dim``).
        max_sequence_length: the longest sequence (Lux's default 4096).
        base: the base of the angular frequencies (default 10000).
        low_memory_variant: tables of ``dim // 2`` columns instead of ``dim``.

    State: ``cos_cache`` and ``sin_cache`` of shape ``(max_sequence_length, dim // 2)`` (or
    ``dim``). Input: ``x``, or ``(x, input_positions)`` with 0-based positions ``(seq,)``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> rope = luxc.nn.RotaryPositionalEmbedding(8, max_sequence_length=16)
    >>> ps, st = luxc.setup(jax.random.key(0), rope)
    >>> rope(jnp.ones((2, 5, 3, 8)), ps, st)[0].shape
    (2, 5, 3, 8)
    """

    def __init__(self, dim: int, *, max_sequence_length: int = 4096, base: int = 10000,
                 low_memory_variant: bool = True):
        self.dim = _positive_int("RotaryPositionalEmbedding", "dim", dim)
        if dim % 2:
            raise ValueError("RotaryPositionalEmbedding: dim must be even (features are rotated "
                             f"in pairs); received {dim}")
        self.max_sequence_length = _positive_int("RotaryPositionalEmbedding",
                                                 "max_sequence_length", max_sequence_length)
        self.base, self.low_memory_variant = base, bool(low_memory_variant)

    def init_states(self, key: jax.Array) -> dict:
        return compute_rotary_embedding_params(self.dim, self.max_sequence_length,
                                               base=self.base,
                                               low_memory_variant=self.low_memory_variant)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        x, positions = x if isinstance(x, tuple) else (x, None)
        if jnp.ndim(x) != 4 or x.shape[-1] < self.dim:
            raise LayerShapeError(f"{self.summary()} expects (batch, seq, heads, head_dim >= "
                                  f"{self.dim}); received shape {jnp.shape(x)}")
        caches = (st["cos_cache"], st["sin_cache"])
        args = caches if positions is None else (positions, *caches)
        rotated = apply_rotary_embedding(x[..., : self.dim], *args, seq_dim=1)
        return jnp.concatenate([rotated, x[..., self.dim:]], axis=-1), st

    def summary(self) -> str:
        return f"RotaryPositionalEmbedding({self.dim})"
