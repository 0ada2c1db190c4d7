"""Embedding, MultiHeadAttention, SkipConnection and Parallel against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc import nn
from luxc.training import single_train_step


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_embedding_row_lookup_any_shape():
    layer = nn.Embedding(7, 3)
    ps, st = luxc.setup(0, layer)
    w = np.asarray(ps["weight"])
    # Lux's default init is rand32, U[0, 1) (Lux.jl src/layers/embedding.jl).
    assert w.shape == (7, 3) and w.min() >= 0.0 and w.max() < 1.0
    idx = np.array([[[0, 6], [3, 3]], [[1, 2], [5, 4]]])
    y, _ = layer(jnp.asarray(idx), ps, st)
    np.testing.assert_array_equal(np.asarray(y), w[idx])
    assert np.asarray(layer(jnp.asarray(4), ps, st)[0]).shape == (3,)


def test_embedding_gradient_is_sparse_row_sum():
    layer = nn.Embedding(6, 4)
    ps, st = luxc.setup(1, layer)
    idx = jnp.array([[1, 3, 1], [0, 1, 3]])
    g_out = _rand(2, 2, 3, 4)
    grad = jax.grad(lambda p: jnp.sum(layer(idx, p, st)[0] * g_out))(ps)["weight"]
    expected = np.zeros((6, 4), np.float32)
    np.add.at(expected, np.asarray(idx).ravel(), g_out.reshape(-1, 4))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-6)
    assert not np.asarray(grad)[[2, 4, 5]].any()  # rows never looked up get no gradient


def test_embedding_bad_input():
    layer = nn.Embedding(5, 2)
    ps, st = luxc.setup(0, layer)
    with pytest.raises(IndexError, match="index 5 is outside \\[0, 5\\)"):
        layer(jnp.array([0, 5]), ps, st)
    with pytest.raises(IndexError, match="index -1"):
        layer(np.array([-1, 2]), ps, st)
    with pytest.raises(ValueError, match="integer indices"):
        layer(jnp.ones(3), ps, st)
    # Under jit the indices are unknown: XLA's gather clamps, as documented.
    y = jax.jit(lambda i: layer(i, ps, st)[0])(jnp.array([7]))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ps["weight"])[[4]])


def _attention_by_hand(ps, q, k, v, heads, causal):
    def proj(x, name):
        return np.asarray(x) @ np.asarray(ps[name]["weight"]).T

    b, tq, d = q.shape
    tk, hd = k.shape[1], d // heads
    qh = proj(q, "q_proj").reshape(b, tq, heads, hd)
    kh = proj(k, "k_proj").reshape(b, tk, heads, hd)
    vh = proj(v, "v_proj").reshape(b, tk, heads, hd)
    scores = np.einsum("bqhd,bkhd->bhqk", qh, kh) / np.sqrt(hd)
    if causal:
        scores = np.where(np.tril(np.ones((tq, tk), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, vh).reshape(b, tq, d)
    return out @ np.asarray(ps["out_proj"]["weight"]).T, weights


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_einsum_softmax(causal):
    mha = nn.MultiHeadAttention(8, nheads=2, is_causal=causal)
    ps, st = luxc.setup(3, mha)
    # Lux's fields (src/layers/attention.jl): four projections and the attention dropout.
    assert sorted(ps) == ["attention_dropout", "k_proj", "out_proj", "q_proj", "v_proj"]
    assert "bias" not in ps["q_proj"]  # Lux's default dense_kwargs: use_bias=false
    x = _rand(4, 3, 5, 8)
    (y, alpha), _ = mha(jnp.asarray(x), ps, st)
    y_ref, alpha_ref = _attention_by_hand(ps, x, x, x, 2, causal)
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-4, atol=1e-5)
    # α is Lux's (kv_len, q_len, nheads, batch) reversed: (batch, nheads, q_len, kv_len).
    np.testing.assert_allclose(np.asarray(alpha), alpha_ref, rtol=1e-4, atol=1e-6)


def test_attention_cross_inputs():
    mha = nn.MultiHeadAttention(6, 3)
    ps, st = luxc.setup(5, mha)
    q, k, v = _rand(6, 2, 4, 6), _rand(7, 2, 7, 6), _rand(8, 2, 7, 6)
    (y, alpha), _ = mha((jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)), ps, st)
    assert y.shape == (2, 4, 6) and alpha.shape == (2, 3, 4, 7)
    np.testing.assert_allclose(np.asarray(y), _attention_by_hand(ps, q, k, v, 3, False)[0],
                               rtol=1e-4, atol=1e-5)
    (y2, _), _ = mha((jnp.asarray(q), jnp.asarray(k)), ps, st)
    np.testing.assert_allclose(np.asarray(y2), _attention_by_hand(ps, q, k, k, 3, False)[0],
                               rtol=1e-4, atol=1e-5)


def test_causal_attention_does_not_look_ahead():
    mha = nn.MultiHeadAttention(8, nheads=4, is_causal=True)
    ps, st = luxc.setup(0, mha)
    x = _rand(9, 2, 6, 8)
    changed = x.copy()
    changed[:, 4:] = _rand(10, 2, 2, 8)
    y1 = np.asarray(mha(jnp.asarray(x), ps, st)[0][0])
    y2 = np.asarray(mha(jnp.asarray(changed), ps, st)[0][0])
    np.testing.assert_array_equal(y1[:, :4], y2[:, :4])
    assert np.abs(y1[:, 4:] - y2[:, 4:]).max() > 1e-3
    # Without the mask the earlier positions do see the change.
    full = nn.MultiHeadAttention(8, nheads=4)
    assert np.abs(np.asarray(full(jnp.asarray(x), ps, st)[0][0])[:, :4]
                  - np.asarray(full(jnp.asarray(changed), ps, st)[0][0])[:, :4]).max() > 1e-3


def test_attention_bad_config_and_input():
    with pytest.raises(ValueError, match="nheads \\(3\\) must divide the qk size \\(8\\)"):
        nn.MultiHeadAttention(8, 3)
    mha = nn.MultiHeadAttention(8, 2)
    ps, st = luxc.setup(0, mha)
    with pytest.raises(nn.LayerShapeError, match="\\(batch, time, 8\\)"):
        mha(jnp.ones((2, 8)), ps, st)


def test_skip_connection_is_hand_composition():
    dense = nn.Dense(4, 4, jnp.tanh)
    skip = nn.SkipConnection(dense, jnp.add)
    ps, st = luxc.setup(0, skip)
    assert sorted(ps) == ["bias", "weight"]  # a function connection adds no level, as Lux
    x = jnp.asarray(_rand(1, 3, 4))
    np.testing.assert_allclose(np.asarray(skip(x, ps, st)[0]),
                               np.asarray(dense(x, ps, st)[0] + x), rtol=1e-6)
    # A layer as connection gets (layer(x), x) and its own parameters.
    join = nn.Parallel(jnp.multiply, nn.Dense(4, 2), nn.Dense(4, 2))
    skip2 = nn.SkipConnection(dense, join)
    ps2, st2 = luxc.setup(0, skip2)
    assert sorted(ps2) == ["connection", "layers"]
    mx = dense(x, ps2["layers"], st2["layers"])[0]
    pc = ps2["connection"]
    expected = (mx @ pc["layer_1"]["weight"].T + pc["layer_1"]["bias"]) * (
        x @ pc["layer_2"]["weight"].T + pc["layer_2"]["bias"])
    np.testing.assert_allclose(np.asarray(skip2(x, ps2, st2)[0]), np.asarray(expected),
                               rtol=1e-5)


def test_parallel_is_hand_composition():
    a, b = nn.Dense(3, 2), nn.Dense(3, 2, jax.nn.relu)
    par = nn.Parallel(jnp.add, a, b)
    ps, st = luxc.setup(0, par)
    assert sorted(ps) == ["layer_1", "layer_2"]
    x, x2 = jnp.asarray(_rand(2, 5, 3)), jnp.asarray(_rand(3, 5, 3))
    ya, yb = a(x, ps["layer_1"], {})[0], b(x, ps["layer_2"], {})[0]
    np.testing.assert_allclose(np.asarray(par(x, ps, st)[0]), np.asarray(ya + yb), rtol=1e-6)
    # A tuple input sends element i to layer i; connection None returns the tuple.
    pair, _ = nn.Parallel(None, a, b)((x, x2), ps, st)
    np.testing.assert_allclose(np.asarray(pair[1]), np.asarray(b(x2, ps["layer_2"], {})[0]))
    with pytest.raises(ValueError, match="one element per layer \\(2\\); received 3"):
        par((x, x, x), ps, st)
    nested = nn.Parallel(nn.WrappedFunction(lambda t: t[0] - t[1]), a, b)
    psn, stn = luxc.setup(0, nested)
    assert sorted(psn) == ["connection", "layers"] and sorted(psn["layers"]) == ["layer_1",
                                                                                 "layer_2"]
    yn = nested(x, psn, stn)[0]
    ln = psn["layers"]
    np.testing.assert_allclose(np.asarray(yn), np.asarray(
        a(x, ln["layer_1"], {})[0] - b(x, ln["layer_2"], {})[0]), rtol=1e-6)


def _tiny_lm(vocab=11, dim=8, time=6):
    block = nn.SkipConnection(nn.Chain(nn.LayerNorm(dim),
                                       nn.MultiHeadAttention(dim, nheads=2, is_causal=True),
                                       lambda ya: ya[0]), jnp.add)
    pos = nn.Parallel(jnp.add, nn.Embedding(vocab, dim),
                      nn.Chain(lambda t: jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape),
                               nn.Embedding(time, dim)))
    return nn.Chain(pos, block, nn.Dense(dim, vocab))


def _objective(model, ps, st, data):
    x, y = data
    logits, st = model(x, ps, st)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return loss, st, {}


def test_compiled_step_equals_eager():
    model = _tiny_lm()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 11, (4, 7)).astype(np.int32)
    data = (jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:]))
    results = []
    for backend in (luxc.AutoJAX(), luxc.AutoXLA()):
        ps, st = luxc.setup(0, model)
        ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
        losses = []
        for _ in range(3):
            _, loss, _, ts = single_train_step(backend, _objective, data, ts,
                                                    return_gradients=False)
            losses.append(float(loss))
        results.append((losses, ts.parameters))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           results[0][1], results[1][1])
    assert results[0][0][-1] < results[0][0][0]
