"""Lux's MultiHeadAttention forms, positional embeddings and joining containers, against
independent computations (Lux.jl src/layers/attention.jl, embedding.jl, containers.jl)."""

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


def _dense(ps, x):
    return np.asarray(x) @ np.asarray(ps["weight"]).T


# ----------------------------------------------------------------------------- attention
def test_attention_general_dims_form_and_mask():
    # Lux: (q_in, k_in, v_in) => (qk, v) => out, here ((6, 5, 4), (8, 12), 3).
    mha = nn.MultiHeadAttention(((6, 5, 4), (8, 12), 3), nheads=2)
    ps, st = luxc.setup(0, mha)
    shapes = {k: ps[k]["weight"].shape for k in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert shapes == {"q_proj": (8, 6), "k_proj": (8, 5), "v_proj": (12, 4), "out_proj": (3, 12)}
    q, k, v = _rand(1, 2, 3, 6), _rand(2, 2, 7, 5), _rand(3, 2, 7, 4)
    mask = np.random.default_rng(4).random((2, 1, 3, 7)) > 0.4
    mask[..., 0] = True  # every query sees at least one key
    (y, alpha), _ = mha(tuple(map(jnp.asarray, (q, k, v, mask))), ps, st)
    qh = _dense(ps["q_proj"], q).reshape(2, 3, 2, 4)
    kh = _dense(ps["k_proj"], k).reshape(2, 7, 2, 4)
    vh = _dense(ps["v_proj"], v).reshape(2, 7, 2, 6)
    logits = np.einsum("blhd,bshd->bhls", qh, kh) / 2.0
    logits = np.where(mask, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhls,bshe->blhe", w, vh).reshape(2, 3, 12)
    np.testing.assert_allclose(np.asarray(alpha), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(y), _dense(ps["out_proj"], out), rtol=1e-4,
                               atol=1e-5)
    assert np.all(np.asarray(alpha)[~np.broadcast_to(mask, alpha.shape)] == 0)


def test_attention_dims_forms_are_lux_forms():
    from luxc.nn._attention import parse_dims
    assert parse_dims(4) == dict(q_in=4, k_in=4, v_in=4, qk=4, v=4, out=4)
    # in_dim => qkv_dim => out_dim, flat or nested as Lux's pairs nest.
    assert parse_dims((4, 8, 2)) == parse_dims((4, (8, 2))) == dict(
        q_in=4, k_in=4, v_in=4, qk=8, v=8, out=2)
    for bad in ((4, 8), (0, 8, 2), ((4, 4), 8, 2), "64"):
        with pytest.raises(ValueError, match="dims must be an int, or"):
            nn.MultiHeadAttention(bad)
    with pytest.raises(ValueError, match="nheads \\(4\\) must divide the v size \\(6\\)"):
        nn.MultiHeadAttention((8, (8, 6), 8), nheads=4)


def test_attention_mask_and_is_causal_are_exclusive_and_printout():
    mha = nn.MultiHeadAttention(4, nheads=2, is_causal=False)
    ps, st = luxc.setup(0, mha)
    x = jnp.ones((1, 3, 4))
    with pytest.raises(ValueError, match="a mask and is_causal cannot both be given"):
        mha((x, x, x, jnp.ones((3, 3), bool)), ps, st)
    assert mha.summary() == "MultiHeadAttention(4 => (4, 4) => 4; nheads=2, is_causal=false)"
    with pytest.warns(DeprecationWarning, match="is_causal"):
        old = nn.MultiHeadAttention(4, 2, causal=True)
    assert old.is_causal is True


def test_attention_dropout_drops_weights_in_training_only():
    mha = nn.MultiHeadAttention(4, nheads=1, attention_dropout_probability=0.5)
    ps, st = luxc.setup(0, mha)
    assert set(st["attention_dropout"]) == {"rng", "training"}
    x = jnp.asarray(_rand(5, 2, 6, 4))
    (y_train, _), st2 = mha(x, ps, st)
    (y_test, alpha), _ = mha(x, ps, luxc.testmode(st))
    # In test mode y is α·V exactly; in training a fresh mask changes it and the key advances.
    vh = _dense(ps["v_proj"], x)
    expected = _dense(ps["out_proj"], np.einsum("bls,bse->ble", np.asarray(alpha)[:, 0], vh))
    np.testing.assert_allclose(np.asarray(y_test), expected, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(y_train) - np.asarray(y_test)).max() > 1e-3
    assert not np.array_equal(np.asarray(st2["attention_dropout"]["rng"]),
                              np.asarray(st["attention_dropout"]["rng"]))


# ----------------------------------------------------------------------------- positions
def test_sinusoidal_embedding_is_lux_formula():
    pe = nn.SinusoidalPositionalEmbedding(6, min_freq=0.01, max_freq=2.0)
    ps, st = luxc.setup(0, pe)
    # Lux: sigmas = exp(range(1, 0; length=dims÷2) .* (log(max) - log(min)) .+ log(min)).
    sigmas = np.exp(np.array([1.0, 0.5, 0.0]) * (np.log(2.0) - np.log(0.01)) + np.log(0.01))
    np.testing.assert_allclose(np.asarray(st["sigmas"]), sigmas, rtol=1e-6)
    x = np.array([[0.0, 1.0, 2.5], [3.0, 4.0, 7.0]], np.float32)
    y, _ = pe(jnp.asarray(x), ps, st)
    arg = x[..., None] * sigmas
    expected = np.concatenate([np.sin(arg), np.cos(arg)], -1) * np.sqrt(2 / 6)
    assert y.shape == (2, 3, 6)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-6)
    turns = nn.SinusoidalPositionalEmbedding(6, min_freq=0.01, max_freq=2.0, full_turns=True)
    np.testing.assert_allclose(np.asarray(luxc.setup(0, turns)[1]["sigmas"]),
                               sigmas * 2 * np.pi, rtol=1e-6)


def _rope_by_hand(x, base=10000):
    """Rotate-half RoPE on (batch, seq, heads, d) from the definition, in float64."""
    d, t = x.shape[-1], x.shape[1]
    theta = base ** (-np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * theta[None, :]
    c, s = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


@pytest.mark.parametrize("low_memory", [True, False])
def test_rotary_embedding_matches_definition(low_memory):
    rope = nn.RotaryPositionalEmbedding(8, max_sequence_length=16, low_memory_variant=low_memory)
    ps, st = luxc.setup(0, rope)
    assert st["cos_cache"].shape == (16, 4 if low_memory else 8)
    x = _rand(0, 2, 5, 3, 8)
    y, _ = rope(jnp.asarray(x), ps, st)
    np.testing.assert_allclose(np.asarray(y), _rope_by_hand(x.astype(np.float64)), rtol=1e-5,
                               atol=1e-6)


def test_rotary_embedding_scores_depend_on_relative_position_only():
    rope = nn.RotaryPositionalEmbedding(4, max_sequence_length=32)
    ps, st = luxc.setup(0, rope)
    q, k = _rand(1, 1, 1, 1, 4), _rand(2, 1, 1, 1, 4)

    def at(v, pos):
        return np.asarray(rope((jnp.asarray(v), jnp.array([pos])), ps, st)[0]).ravel()

    # <R_m q, R_n k> is a function of m - n: the property RoPE exists for.
    np.testing.assert_allclose(at(q, 7) @ at(k, 3), at(q, 20) @ at(k, 16), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(at(q, 11)), np.linalg.norm(q), rtol=1e-6)


def test_rotary_rotates_leading_dim_features_only_and_checks_lengths():
    # Lux's docstring: features past `dim` are left unchanged.
    rope = nn.RotaryPositionalEmbedding(4, max_sequence_length=8)
    ps, st = luxc.setup(0, rope)
    x = _rand(3, 1, 6, 2, 7)
    y = np.asarray(rope(jnp.asarray(x), ps, st)[0])
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
    np.testing.assert_allclose(y[..., :4], _rope_by_hand(x[..., :4].astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(nn.LayerShapeError, match="longer than the tables \\(8 positions\\)"):
        rope(jnp.ones((1, 9, 1, 4)), ps, st)
    with pytest.raises(ValueError, match="dim must be even"):
        nn.RotaryPositionalEmbedding(5)
    caches = nn.compute_rotary_embedding_params(4, 8, base=10000)
    with pytest.raises(nn.LayerShapeError, match="one entry per step"):
        nn.apply_rotary_embedding(jnp.ones((1, 3, 1, 4)), jnp.arange(2), caches["cos_cache"],
                                  caches["sin_cache"])


# ----------------------------------------------------------------------------- containers
def test_named_chain_and_parallel_keep_the_names():
    chain = nn.Chain(encoder=nn.Dense(3, 4, jnp.tanh), decoder=nn.Dense(4, 3))
    ps, st = luxc.setup(0, chain)
    assert list(ps) == ["encoder", "decoder"] and chain.encoder is chain["encoder"] is chain[0]
    x = _rand(0, 5, 3)
    h = np.tanh(_dense(ps["encoder"], x) + np.asarray(ps["encoder"]["bias"]))
    np.testing.assert_allclose(np.asarray(chain(jnp.asarray(x), ps, st)[0]),
                               _dense(ps["decoder"], h) + np.asarray(ps["decoder"]["bias"]),
                               rtol=1e-5)
    par = nn.Parallel(jnp.add, left=nn.Dense(3, 2), right=nn.Dense(3, 2))
    assert list(luxc.setup(0, par)[0]) == ["left", "right"]
    with pytest.raises(TypeError, match="positionally or as keywords, not both"):
        nn.Chain(nn.Dense(1, 1), head=nn.Dense(1, 1))


def test_branch_layer_sends_the_whole_input_to_every_layer():
    a, b = nn.Dense(2, 3), nn.Dense(2, 3)
    branch = nn.BranchLayer(a, b)
    ps, st = luxc.setup(0, branch)
    x = jnp.asarray(_rand(1, 4, 2))
    ya, yb = a(x, ps["layer_1"], {})[0], b(x, ps["layer_2"], {})[0]
    (o1, o2), _ = branch(x, ps, st)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(ya))
    np.testing.assert_allclose(np.asarray(o2), np.asarray(yb))
    summed = nn.BranchLayer(a, b, fusion=sum)
    np.testing.assert_allclose(np.asarray(summed(x, ps, st)[0]), np.asarray(ya + yb), rtol=1e-6)
    fused = nn.BranchLayer(a, b, fusion=nn.WrappedFunction(lambda t: t[0] * t[1]))
    psf, stf = luxc.setup(0, fused)
    assert sorted(psf) == ["fusion", "layers"]
    lf = psf["layers"]
    np.testing.assert_allclose(np.asarray(fused(x, psf, stf)[0]), np.asarray(
        a(x, lf["layer_1"], {})[0] * b(x, lf["layer_2"], {})[0]), rtol=1e-6)


def test_pairwise_fusion_follows_lux_docstring():
    l1, l2 = nn.Dense(2, 2), nn.Dense(2, 2)
    fuse = nn.PairwiseFusion(lambda xi, y: xi - 2 * y, l1, l2)
    ps, st = luxc.setup(0, fuse)
    x1, x2, x3 = (jnp.asarray(_rand(i, 3, 2)) for i in range(3))
    y1 = x2 - 2 * l1(x1, ps["layer_1"], {})[0]
    y2 = x3 - 2 * l2(y1, ps["layer_2"], {})[0]
    np.testing.assert_allclose(np.asarray(fuse((x1, x2, x3), ps, st)[0]), np.asarray(y2),
                               rtol=1e-5)
    z1 = x1 - 2 * l1(x1, ps["layer_1"], {})[0]
    z2 = x1 - 2 * l2(z1, ps["layer_2"], {})[0]
    np.testing.assert_allclose(np.asarray(fuse(x1, ps, st)[0]), np.asarray(z2), rtol=1e-5)
    with pytest.raises(ValueError, match="one more element than there are layers \\(3\\)"):
        fuse((x1, x2), ps, st)


# ----------------------------------------------------------------------------- end to end
def _rope_lm(vocab=11, dim=8, heads=2):
    def split_heads(x):
        return x.reshape(x.shape[:2] + (heads, dim // heads))

    rope_q = nn.Chain(split_heads, nn.RotaryPositionalEmbedding(dim // heads,
                                                               max_sequence_length=16),
                      lambda x: x.reshape(x.shape[:2] + (dim,)))
    attn = nn.Chain(nn.LayerNorm(dim), rope_q,
                    nn.MultiHeadAttention(dim, nheads=heads, is_causal=True), lambda ya: ya[0])
    mix = nn.BranchLayer(nn.Dense(dim, dim), nn.Dense(dim, dim, jnp.tanh), fusion=sum)
    return nn.Chain(embed=nn.Embedding(vocab, dim), block=nn.SkipConnection(attn, jnp.add),
                    mix=mix, head=nn.Dense(dim, vocab))


def _objective(model, ps, st, data):
    x, y = data
    logits, st = model(x, ps, st)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), st, {}


def test_compiled_step_equals_eager_and_bf16_trains():
    model = _rope_lm()
    tokens = np.random.default_rng(0).integers(0, 11, (4, 7)).astype(np.int32)
    data = (jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:]))
    runs = []
    for backend, opts in ((luxc.AutoJAX(), None), (luxc.AutoXLA(), None),
                          (luxc.AutoXLA(), luxc.CompileOptions(mixed_precision="bf16"))):
        ps, st = luxc.setup(0, model)
        ts = luxc.TrainState(model, ps, st, optax.adam(1e-2))
        losses = []
        for _ in range(4):
            _, loss, _, ts = single_train_step(backend, _objective, data, ts,
                                               return_gradients=False, compile_options=opts)
            losses.append(float(loss))
        runs.append((losses, ts))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           runs[0][1].parameters, runs[1][1].parameters)
    bf16 = runs[2][0]
    assert bf16[-1] < bf16[0] and abs(bf16[0] - runs[0][0][0]) < 0.05


def test_checkpoint_round_trip(tmp_path):
    model = _rope_lm()
    ps, st = luxc.setup(1, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    luxc.save_state(tmp_path / "ckpt.safetensors", ts)
    back = luxc.load_state(tmp_path / "ckpt.safetensors", like=ts)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back.parameters, ts.parameters)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back.states, ts.states)
