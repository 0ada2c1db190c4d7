"""Causal attention computed in query blocks (luxc/nn/_attention.py) is the masked softmax of
the definition: against float64 numpy, against the one-block path with the same mask given
explicitly, in values, gradients and bfloat16, and it computes fewer scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxc
from luxc import nn
from luxc.nn._attention import causal_query_blocks, scaled_dot_product_attention


def _heads(seed, b, t, h, d):
    return np.random.default_rng(seed).standard_normal((b, t, h, d)).astype(np.float32)


def _by_hand(q, k, v):
    """Causal attention in float64 numpy, straight from the definition (s <= l)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("blhd,bshd->bhls", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
    alpha = np.exp(scores - scores.max(-1, keepdims=True))
    alpha /= alpha.sum(-1, keepdims=True)
    return np.einsum("bhls,bshe->blhe", alpha, v), alpha


@pytest.mark.parametrize("itemsize,smallest", [(4, 32), (8, 32), (2, 64)])
@pytest.mark.parametrize("q_len", [1, 31, 32, 63, 64, 100, 128, 130, 256, 1000])
def test_query_blocks_cover_the_queries_in_order(q_len, itemsize, smallest):
    blocks = causal_query_blocks(q_len, itemsize)
    assert blocks[0][0] == 0 and blocks[-1][1] == q_len
    assert all(b == a for (_, b), (a, _) in zip(blocks, blocks[1:]))
    assert len(blocks) == max(1, min(4, q_len // smallest))
    assert len(blocks) == 1 or min(b - a for a, b in blocks) >= smallest


@pytest.mark.parametrize("q_len,kv_len", [(128, 128), (100, 100), (130, 130), (64, 96),
                                          (96, 64), (40, 40)])
def test_blocked_causal_attention_is_the_definition(q_len, kv_len):
    q, k, v = _heads(0, 2, q_len, 2, 8), _heads(1, 2, kv_len, 2, 8), _heads(2, 2, kv_len, 2, 4)
    y, alpha = scaled_dot_product_attention(q, k, v, is_causal=True)
    y_ref, alpha_ref = _by_hand(q, k, v)
    assert y.shape == (2, q_len, 2, 4) and alpha.shape == (2, 2, q_len, kv_len)
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(alpha), alpha_ref, rtol=1e-5, atol=1e-7)
    # The keys after each query get exactly zero weight, in the blocks' padding too.
    assert not np.asarray(alpha)[..., ~np.tril(np.ones((q_len, kv_len), bool))].any()


def _loss(attend):
    def loss(q, k, v, w):
        return jnp.sum(attend(q, k, v)[0] * w)
    return loss


def test_blocked_gradients_equal_the_one_block_path():
    """The explicit mask takes the one-block path: the same function, computed whole."""
    t = 128
    q, k, v, w = (_heads(i, 2, t, 4, 8) for i in range(4))
    blocked = _loss(lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True))
    whole = _loss(lambda q, k, v: scaled_dot_product_attention(
        q, k, v, mask=np.tril(np.ones((t, t), bool))))
    grad_blocked = jax.jit(jax.grad(blocked, argnums=(0, 1, 2)))
    g_blocked = grad_blocked(q, k, v, w)
    g_whole = jax.jit(jax.grad(whole, argnums=(0, 1, 2)))(q, k, v, w)
    for name, a, b in zip("qkv", g_blocked, g_whole):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5,
                                   err_msg=f"d loss / d {name}")
    # The last key's gradient comes from the last query alone: no block reads ahead.
    only_last = np.zeros_like(w)
    only_last[:, :-1] = w[:, :-1]
    _, g_k, _ = grad_blocked(q, k, v, only_last)  # compiled once, for both weights
    assert not np.asarray(g_k)[:, -1].any()


def test_blocked_bf16_stays_within_bf16_rounding_of_f32():
    q, k, v = (_heads(i, 2, 128, 4, 16) for i in range(3))
    y32, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    y16, a16 = scaled_dot_product_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)),
                                            is_causal=True)
    assert y16.dtype == a16.dtype == jnp.bfloat16
    err = np.linalg.norm(np.asarray(y16, np.float32) - y32) / np.linalg.norm(y32)
    assert err < 2 ** -7, err


@pytest.mark.parametrize("dtype,low,high", [(jnp.float32, 0.55, 0.7), (jnp.bfloat16, 0.7, 0.82)])
def test_blocked_causal_attention_computes_fewer_scores(dtype, low, high):
    """Four blocks of 32 in float32 (5/8 of the two products), two of 64 in bfloat16 (3/4);
    the softmax's work shrinks alike."""
    t = 128
    q, k, v = (jnp.asarray(_heads(i, 4, t, 4, 32), dtype) for i in range(3))

    def flops(**kw):
        fn = jax.jit(lambda q, k, v: scaled_dot_product_attention(q, k, v, **kw)[0])
        return fn.lower(q, k, v).compile().cost_analysis()["flops"]

    whole = flops(mask=np.tril(np.ones((t, t), bool)))
    assert low * whole < flops(is_causal=True) < high * whole


def test_multihead_attention_without_dropout_takes_the_blocks():
    """Lux's default ``attention_dropout_probability=0`` draws nothing: the layer blocks."""
    t, dim = 128, 32
    mha = nn.MultiHeadAttention(dim, nheads=2, is_causal=True)
    ps, st = luxc.setup(0, mha)
    x = jnp.asarray(_heads(5, 4, t, 1, dim)[:, :, 0])
    mask = np.tril(np.ones((t, t), bool))

    def compiled(fn):
        return jax.jit(fn).lower(x).compile()

    masked = nn.MultiHeadAttention(dim, nheads=2)
    blocks = compiled(lambda x: mha(x, ps, st)[0][0])
    whole = compiled(lambda x: masked((x, x, x, mask), ps, st)[0][0])
    assert blocks.cost_analysis()["flops"] < 0.9 * whole.cost_analysis()["flops"]
    np.testing.assert_allclose(np.asarray(blocks(x)), np.asarray(whole(x)), rtol=1e-5, atol=1e-6)
