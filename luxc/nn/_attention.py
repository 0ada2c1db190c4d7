"""Multi-head dot-product attention on batch-first sequences (Lux's ``MultiHeadAttention``,
src/layers/attention.jl, with LuxLib's ``scaled_dot_product_attention``)."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._basic import Dense
from luxc.nn._core import AbstractContainerLayer, AbstractLayer, LayerShapeError
from luxc.nn._dropout import Dropout
from luxc.nn._reshape import NoOpLayer


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_dims(dims: Any) -> dict[str, int]:
    """Lux's ``dims`` forms as a dict of ``q_in, k_in, v_in, qk, v, out``.

    ``dims`` is an int (every size), or ``(in_dims, qkv_dims, out_dims)`` — Lux's
    ``in_dims => qkv_dims => out_dims`` (also accepted nested, ``(in_dims, (qkv_dims, out_dims))``)
    — where ``in_dims`` is an int or ``(q_in, k_in, v_in)`` and ``qkv_dims`` an int or
    ``(qk, v)``.

    >>> parse_dims((16, (8, 4), 2))
    {'q_in': 16, 'k_in': 16, 'v_in': 16, 'qk': 8, 'v': 4, 'out': 2}
    """
    def bad() -> ValueError:
        return ValueError(
            "MultiHeadAttention: dims must be an int, or (in_dims, qkv_dims, out_dims) with "
            "in_dims an int or (q_in, k_in, v_in) and qkv_dims an int or (qk, v) (Lux's "
            f"in_dims => qkv_dims => out_dims); received {dims!r}")

    if _positive(dims):
        return dict.fromkeys(("q_in", "k_in", "v_in", "qk", "v", "out"), dims)
    if not isinstance(dims, tuple | list):
        raise bad()
    if len(dims) == 2 and isinstance(dims[1], tuple | list) and len(dims[1]) == 2:
        dims = (dims[0], *dims[1])
    if len(dims) != 3:
        raise bad()
    in_dims, qkv_dims, out = dims
    ins = (in_dims,) * 3 if _positive(in_dims) else tuple(in_dims) if isinstance(
        in_dims, tuple | list) else ()
    qkv = (qkv_dims,) * 2 if _positive(qkv_dims) else tuple(qkv_dims) if isinstance(
        qkv_dims, tuple | list) else ()
    if len(ins) != 3 or len(qkv) != 2 or not all(map(_positive, (*ins, *qkv, out))):
        raise bad()
    return {"q_in": ins[0], "k_in": ins[1], "v_in": ins[2], "qk": qkv[0], "v": qkv[1],
            "out": out}


def scaled_dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                                 mask: jax.Array | None = None, is_causal: bool = False,
                                 dropout: Any = None) -> tuple[jax.Array, jax.Array]:
    r"""Attention over heads laid out ``(batch, time, heads, head_dim)``.

    .. math::
        \alpha_{bhls} = \mathrm{softmax}_s\Big(\frac{\sum_d q_{blhd} k_{bshd}}{\sqrt{d}}
        \;\text{masked}\Big), \qquad y_{blhe} = \sum_s \mathrm{drop}(\alpha)_{bhls} v_{bshe}

    ``mask`` (true = keep) broadcasts against ``α``'s shape ``(batch, heads, q_len, kv_len)``;
    ``is_causal`` keeps ``s <= l``. The logits and the softmax are float32 whatever the inputs'
    dtype (bfloat16 logits lose the small differences softmax amplifies). Returns ``(y, α)``.

    The heads are moved ahead of time once, so every product is a batched matrix product over
    ``(batch, heads)``. Causal attention without dropout splits the queries into up to four
    blocks of at least 32 positions, 64 in 16-bit types (:func:`causal_query_blocks`); block
    ``[a, b)`` reads only the keys ``[0, b)``: at 4 blocks it computes 5/8 of the scores and
    their gradients, at 2 blocks 3/4.
    ``α`` is the same matrix either way (its masked entries are zeros), and ``y`` agrees with
    the one-block result to rounding: the sums run over the same nonzero terms.
    """
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    qt, kt, vt = (jnp.swapaxes(a, 1, 2) for a in (q * scale, k, v))  # (batch, heads, time, d)
    lq, lk = q.shape[1], k.shape[1]
    if is_causal and dropout is None:
        parts = [_attend(qt[:, :, a:b], kt[:, :, :min(b, lk)], vt[:, :, :min(b, lk)],
                         np.arange(min(b, lk)) <= np.arange(a, b)[:, None])
                 for a, b in causal_query_blocks(lq, q.dtype.itemsize)]
        y = jnp.concatenate([y for y, _ in parts], axis=2)
        alpha = jnp.concatenate([jnp.pad(alpha, ((0, 0),) * 3 + ((0, lk - alpha.shape[-1]),))
                                 for _, alpha in parts], axis=2)
        return jnp.swapaxes(y, 1, 2), alpha
    if is_causal:
        mask = np.tril(np.ones((lq, lk), bool))
    y, alpha = _attend(qt, kt, vt, mask, dropout)
    return jnp.swapaxes(y, 1, 2), alpha


def causal_query_blocks(q_len: int, itemsize: int = 4) -> list[tuple[int, int]]:
    """The query blocks ``[a, b)`` of causal attention: up to four, each of at least 32
    positions for 4-byte (and wider) elements and 64 for 2-byte ones (bfloat16, float16).

    Measured on XLA:CPU with the character GPT of examples/charlm.py (6 blocks, width 128,
    4 heads, batch 16): in float32 at context 128, four blocks of 32 took the training step
    from 188 to 156 ms, where eight of 16 took 178 and two of 64 were 1.05× slower than four;
    at context 256 (batch 8), four blocks of 64 took it from 256 to 193 ms and eight of 32 to
    199. In bfloat16 at context 128, two blocks of 64 were 0.97-0.98× four of 32, in three runs
    (``benchmarks/README.md``, "Levers").

    >>> causal_query_blocks(128)
    [(0, 32), (32, 64), (64, 96), (96, 128)]
    >>> causal_query_blocks(128, itemsize=2)
    [(0, 64), (64, 128)]
    >>> causal_query_blocks(40)
    [(0, 40)]
    """
    n = max(1, min(4, q_len // (64 if itemsize <= 2 else 32)))
    return [(i * q_len // n, (i + 1) * q_len // n) for i in range(n)]


def _attend(qt: jax.Array, kt: jax.Array, vt: jax.Array, mask: Any,
            dropout: Any = None) -> tuple[jax.Array, jax.Array]:
    """``(y, α)`` of scaled queries ``qt``, keys ``kt`` and values ``vt``, each
    ``(batch, heads, time, d)``; ``y`` is ``(batch, heads, q_len, d_v)``."""
    logits = jnp.einsum("bhld,bhsd->bhls", qt, kt, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    alpha = jax.nn.softmax(logits, axis=-1).astype(qt.dtype)
    dropped = alpha if dropout is None else dropout(alpha)
    return jnp.einsum("bhls,bhse->bhle", dropped, vt), alpha


class MultiHeadAttention(AbstractContainerLayer):
    r"""Multi-head scaled dot-product attention (Vaswani et al. 2017), as Lux's.

    .. math::
        Q = q W_q^\top,\; K = k W_k^\top,\; V = v W_v^\top,\qquad
        y = [\mathrm{head}_1, \ldots, \mathrm{head}_H]\, W_o^\top,\qquad
        \mathrm{head}_h = \mathrm{drop}(\alpha_h) V_h,\;
        \alpha_h = \mathrm{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{d}} + M\right)

    Args:
        dims: Lux's forms (see :func:`parse_dims`): ``64``; ``(in_dims, qkv_dims, out_dims)``
            for Lux's ``in_dims => qkv_dims => out_dims``, e.g. ``((16, 12, 8), (32, 24), 16)``.
        nheads: number of heads; must divide the query/key and the value sizes.
        attention_dropout_probability: dropout on ``α`` in training mode (Lux's default 0).
        is_causal: position ``l`` attends to ``0 … l`` only; then no ``mask`` may be given.
        use_bias: biases in the four projections (Lux's default ``dense_kwargs``: no bias).

    Parameters and state, as Lux: ``q_proj``, ``k_proj``, ``v_proj``, ``attention_dropout``,
    ``out_proj`` (``Dense`` weights ``(out, in)``).

    Input: ``qkv`` ``(batch, time, q_in)`` (self-attention), ``(q, kv)``, ``(q, k, v)`` or
    ``(q, k, v, mask)`` with ``q`` ``(batch, q_len, q_in)``, ``k`` ``(batch, kv_len, k_in)``,
    ``v`` ``(batch, kv_len, v_in)`` and ``mask`` (true = attend) broadcastable to
    ``(batch, nheads, q_len, kv_len)``.
    Output: ``((y, α), st)`` with ``y`` ``(batch, q_len, out)`` and the attention weights ``α``
    ``(batch, nheads, q_len, kv_len)`` (Lux's ``(kv_len, q_len, nheads, batch)`` reversed).
    In a ``Chain``, take ``y`` with ``WrappedFunction(lambda ya: ya[0])`` as Lux users do with
    ``WrappedFunction(first)``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> mha = luxc.nn.MultiHeadAttention(8, nheads=2, is_causal=True)
    >>> ps, st = luxc.setup(jax.random.key(0), mha)
    >>> (y, alpha), _ = mha(jnp.ones((3, 5, 8)), ps, st)
    >>> y.shape, alpha.shape
    ((3, 5, 8), (3, 2, 5, 5))
    """

    def __init__(self, dims: Any, nheads: int = 1, *, attention_dropout_probability: float = 0.0,
                 is_causal: bool | None = None, use_bias: bool = False,
                 causal: bool | None = None):
        if causal is not None:  # luxc's round-3 keyword
            warnings.warn("MultiHeadAttention(causal=...) is Lux's is_causal=...",
                          DeprecationWarning, stacklevel=2)
            is_causal = causal if is_causal is None else is_causal
        d = parse_dims(dims)
        if not _positive(nheads):
            raise ValueError(f"MultiHeadAttention: nheads must be a positive int; received "
                             f"{nheads!r}")
        for name in ("qk", "v"):
            if d[name] % nheads:
                raise ValueError(
                    f"MultiHeadAttention: nheads ({nheads}) must divide the {name} size "
                    f"({d[name]}); each head takes {name} // nheads features")
        if not 0.0 <= attention_dropout_probability < 1.0:
            raise ValueError("MultiHeadAttention: attention_dropout_probability must be in "
                             f"[0, 1); received {attention_dropout_probability!r}")
        self.dims, self.nheads, self.use_bias = d, nheads, use_bias
        self.is_causal = None if is_causal is None else bool(is_causal)
        self.attention_dropout_probability = float(attention_dropout_probability)
        self.q_proj = Dense(d["q_in"], d["qk"], use_bias=use_bias)
        self.k_proj = Dense(d["k_in"], d["qk"], use_bias=use_bias)
        self.v_proj = Dense(d["v_in"], d["v"], use_bias=use_bias)
        p = self.attention_dropout_probability
        self.attention_dropout = Dropout(p) if p else NoOpLayer()  # as Lux's Dropout(0)
        self.out_proj = Dense(d["v"], d["out"], use_bias=use_bias)

    def sublayers(self) -> dict[str, AbstractLayer]:
        return {"q_proj": self.q_proj, "k_proj": self.k_proj, "v_proj": self.v_proj,
                "attention_dropout": self.attention_dropout, "out_proj": self.out_proj}

    def _split_input(self, x: Any) -> tuple[Any, Any, Any, Any]:
        if not isinstance(x, tuple | list):
            return x, x, x, None
        if len(x) == 2:
            return x[0], x[1], x[1], None
        if len(x) in (3, 4):
            mask = x[3] if len(x) == 4 else None
            if mask is not None and self.is_causal is not None:
                raise ValueError(f"{self.summary()}: a mask and is_causal cannot both be given "
                                 "(Lux's rule); build the layer with is_causal=None to pass "
                                 "a mask")
            return x[0], x[1], x[2], mask
        raise LayerShapeError(f"{self.summary()} expects qkv, (q, kv), (q, k, v) or "
                              f"(q, k, v, mask); received a tuple of {len(x)}")

    def _check(self, q: Any, k: Any, v: Any) -> None:
        d = self.dims
        for name, a, n in (("q", q, d["q_in"]), ("k", k, d["k_in"]), ("v", v, d["v_in"])):
            if jnp.ndim(a) != 3 or jnp.shape(a)[-1] != n:
                raise LayerShapeError(f"{self.summary()} expects {name} of shape (batch, time, "
                                      f"{n}); received {jnp.shape(a)}")
        if jnp.shape(k)[:2] != jnp.shape(v)[:2] or jnp.shape(q)[0] != jnp.shape(k)[0]:
            raise LayerShapeError(f"{self.summary()}: k and v need the same (batch, kv_len) and "
                                  f"q the same batch; received q {jnp.shape(q)}, k "
                                  f"{jnp.shape(k)}, v {jnp.shape(v)}")

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[tuple[jax.Array, jax.Array], dict]:
        q, k, v, mask = self._split_input(x)
        self._check(q, k, v)
        new_st, heads = dict(st), []
        for a, name in ((q, "q_proj"), (k, "k_proj"), (v, "v_proj")):
            y, new_st[name] = getattr(self, name)(a, ps[name], st[name])
            b, t, f = y.shape
            heads.append(jnp.reshape(y, (b, t, self.nheads, f // self.nheads)))
        drop_st = st["attention_dropout"]

        def dropout(alpha: jax.Array) -> jax.Array:
            nonlocal drop_st
            out, drop_st = self.attention_dropout(alpha, ps["attention_dropout"], drop_st)
            return out

        # Dropout(0) draws nothing: without it causal attention may skip the masked blocks.
        out, alpha = scaled_dot_product_attention(
            *heads, mask=mask, is_causal=bool(self.is_causal),
            dropout=dropout if self.attention_dropout_probability else None)
        new_st["attention_dropout"] = drop_st
        out = jnp.reshape(out, out.shape[:2] + (-1,))
        y, new_st["out_proj"] = self.out_proj(out, ps["out_proj"], st["out_proj"])
        return (y, alpha), new_st

    def summary(self) -> str:
        d = self.dims
        text = (f"MultiHeadAttention({d['q_in']} => ({d['k_in']}, {d['v_in']}) => {d['out']}; "
                f"nheads={self.nheads}")
        if self.attention_dropout_probability:
            text += f", attention_dropout_probability={self.attention_dropout_probability}"
        if self.is_causal is not None:
            text += f", is_causal={str(self.is_causal).lower()}"
        return text + ")"
