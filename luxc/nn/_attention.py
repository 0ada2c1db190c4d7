"""Multi-head dot-product attention on batch-first sequences (Lux's ``MultiHeadAttention``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from luxc.nn._basic import Dense
from luxc.nn._core import AbstractContainerLayer, AbstractLayer, LayerShapeError


class MultiHeadAttention(AbstractContainerLayer):
    r"""Multi-head scaled dot-product attention (Vaswani et al. 2017).

    For each head :math:`h` with :math:`d = \mathrm{dim}/\mathrm{heads}`:

    .. math::
        \mathrm{head}_h = \mathrm{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{d}} + M\right) V_h,
        \qquad y = [\mathrm{head}_1, \ldots, \mathrm{head}_H]\, W_o^\top

    with :math:`Q = q W_q^\top`, :math:`K = k W_k^\top`, :math:`V = v W_v^\top` and :math:`M`
    :math:`-\infty` above the diagonal when ``causal`` (position ``t`` sees ``0 … t`` only).
    The kernel is ``jax.nn.dot_product_attention``, so XLA (or cuDNN on a GPU) picks it.

    Args:
        dim: feature size of the inputs, of ``q``/``k``/``v`` and of the output.
        heads: number of heads (Lux's ``nheads``); must divide ``dim``.
        causal: mask out later positions (Lux's ``is_causal``).
        use_bias: biases in the four projections (Lux's default ``dense_kwargs``: no bias).

    Sub-layers and parameters, as Lux: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, each a
    :class:`Dense` ``(dim => dim)``.

    Input: ``x`` of shape ``(batch, time, dim)`` (self-attention), or ``(q, kv)``, or
    ``(q, k, v)`` with ``q`` ``(batch, time_q, dim)`` and ``k``, ``v`` ``(batch, time_kv, dim)``.
    Output: ``(batch, time_q, dim)``.

    Departures from Lux.jl (src/layers/attention.jl): the output is ``y`` alone, not
    ``(y, α)`` — ``jax.nn.dot_product_attention`` does not form the attention weights as an
    output (that is what lets XLA fuse it), and ``y`` alone composes in a ``Chain``; there is no
    ``attention_dropout`` (the jax kernel has none) and no explicit ``mask`` argument.

    >>> import jax, jax.numpy as jnp, luxc
    >>> mha = luxc.nn.MultiHeadAttention(8, 2, causal=True)
    >>> ps, st = luxc.setup(jax.random.key(0), mha)
    >>> y, _ = mha(jnp.ones((3, 5, 8)), ps, st)
    >>> y.shape
    (3, 5, 8)
    """

    def __init__(self, dim: int, heads: int, *, causal: bool = False, use_bias: bool = False):
        if not isinstance(dim, int) or not isinstance(heads, int) or dim <= 0 or heads <= 0:
            raise ValueError(
                f"MultiHeadAttention: dim and heads must be positive ints; received {dim!r}, "
                f"{heads!r}")
        if dim % heads:
            raise ValueError(
                f"MultiHeadAttention: heads ({heads}) must divide dim ({dim}); "
                f"dim // heads is each head's size")
        self.dim, self.heads, self.causal, self.use_bias = dim, heads, bool(causal), use_bias
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            Dense(dim, dim, use_bias=use_bias) for _ in range(4))

    def sublayers(self) -> dict[str, AbstractLayer]:
        return {"q_proj": self.q_proj, "k_proj": self.k_proj, "v_proj": self.v_proj,
                "out_proj": self.out_proj}

    def _split_input(self, x: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        if isinstance(x, tuple | list):
            if len(x) == 2:
                return x[0], x[1], x[1]
            if len(x) == 3:
                return tuple(x)
            raise LayerShapeError(
                f"{self.summary()} expects x, (q, kv) or (q, k, v); received a tuple of {len(x)}")
        return x, x, x

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        q, k, v = self._split_input(x)
        for name, a in (("q", q), ("k", k), ("v", v)):
            if jnp.ndim(a) != 3 or jnp.shape(a)[-1] != self.dim:
                raise LayerShapeError(
                    f"{self.summary()} expects {name} of shape (batch, time, {self.dim}); "
                    f"received {jnp.shape(a)}")
        projected = []
        for a, name in ((q, "q_proj"), (k, "k_proj"), (v, "v_proj")):
            y, _ = self.sublayers()[name](a, ps[name], st[name])
            b, t, _ = y.shape
            projected.append(jnp.reshape(y, (b, t, self.heads, self.dim // self.heads)))
        out = jax.nn.dot_product_attention(*projected, is_causal=self.causal)
        out = jnp.reshape(out, out.shape[:2] + (self.dim,))
        y, _ = self.out_proj(out, ps["out_proj"], st["out_proj"])
        return y, st

    def summary(self) -> str:
        causal = ", causal=True" if self.causal else ""
        return f"MultiHeadAttention({self.dim}, heads={self.heads}{causal})"
