"""Lux's convolution, upsampling and pooling layers (issue 30) against independent values.

References: Lux.jl (6f4b96c) ``src/layers/conv.jl`` (``Conv``, ``ConvTranspose``, ``SamePad``,
``Upsample``, ``PixelShuffle``), ``src/layers/pooling.jl``, and their tests
``test/core_layers/conv_tests.jl`` and ``test/core_layers/pooling_tests.jl`` (Julia's ``(W, H,
C, N)`` arrays read here as ``(N, H, W, C)``). Numbers come from numpy loops written below,
Lux's test values, PyTorch's documented ``Upsample`` example, adjoint identities and finite
differences.
"""

import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import luxc
from luxc import nn
from tests.support import luxc_cli

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _windows(xp, window, stride, dilation, out):
    """Every tap's strided view of the padded ``xp`` (``(N, *spatial, C)``): ``(taps, N, *out, C)``."""
    views = []
    for tap in itertools.product(*(range(k) for k in window)):
        sl = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                   for t, d, s, o in zip(tap, dilation, stride, out))
        views.append(xp[(slice(None), *sl)])
    return np.stack(views)


def _out_size(n, k, s, d, lo, hi):
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


def np_conv(x, w, stride, pads, dilation, groups, flip):
    """The defining sum of a (grouped) convolution, ``w`` flipped for a true convolution."""
    n = x.ndim - 2
    k = w.shape[:n]
    if flip:
        w = w[(slice(None, None, -1),) * n]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out = [_out_size(x.shape[1 + i], k[i], stride[i], dilation[i], *pads[i]) for i in range(n)]
    taps = _windows(xp, k, stride, dilation, out)
    w = w.reshape(-1, *w.shape[n:])
    cin, cout = w.shape[1], w.shape[2] // groups
    y = np.zeros((x.shape[0], *out, w.shape[2]))
    for g in range(groups):
        y[..., g * cout:(g + 1) * cout] = np.einsum(
            "t...i,tio->...o", taps[..., g * cin:(g + 1) * cin], w[:, :, g * cout:(g + 1) * cout])
    return y


def np_pool(x, op, window, stride, pads, dilation, p=2):
    n = x.ndim - 2
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-np.inf if op == "max" else 0)
    out = [_out_size(x.shape[1 + i], window[i], stride[i], dilation[i], *pads[i]) for i in range(n)]
    taps = _windows(xp, window, stride, dilation, out)
    if op == "max":
        return taps.max(0)
    if op == "mean":
        return taps.sum(0) / math.prod(window)
    return (taps ** p).sum(0) ** (1 / p)


# --- Conv ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [(3, 3), (3, 1), (1, 3)])
def test_conv_of_an_impulse_is_its_kernel_a_cross_correlation_the_flipped_kernel(kernel):
    # conv_tests.jl, "Conv with non quadratic window FluxML/Flux.jl#700": y[2:end-1, 2:end-1]
    # == weight for Lux's default (a true convolution).
    x = np.zeros((1, 7, 7, 1), np.float32)
    x[0, 3, 3, 0] = 1
    for cc in (False, True):
        layer = nn.Conv(kernel, 1, 1, use_bias=False, cross_correlation=cc)
        ps, st = luxc.setup(0, layer)
        y = np.asarray(layer(jnp.asarray(x), ps, st)[0])[0, :, :, 0]
        h, w = 7 - kernel[0] + 1, 7 - kernel[1] + 1
        window = y[(h - kernel[0]) // 2:(h + kernel[0]) // 2, (w - kernel[1]) // 2:(w + kernel[1]) // 2]
        weight = np.asarray(ps["weight"])[:, :, 0, 0]
        np.testing.assert_allclose(window, weight[::-1, ::-1] if cc else weight, rtol=1e-6)
        assert np.count_nonzero(y) == weight.size


@pytest.mark.parametrize("cc", [False, True])
@pytest.mark.parametrize("kernel,cin,cout,kw,x_shape", [
    ((3, 3), 4, 6, dict(stride=2, pad=(1, 0, 2, 1), groups=2), (2, 9, 8, 4)),
    ((2, 3), 3, 3, dict(dilation=(2, 1), pad=nn.SamePad(), groups=3), (1, 7, 6, 3)),
    ((3,), 2, 4, dict(stride=3, pad=1), (3, 11, 2)),
    ((2, 2, 2), 2, 3, dict(pad=1, dilation=2), (1, 5, 6, 4, 2)),
])
def test_conv_equals_the_defining_sum(cc, kernel, cin, cout, kw, x_shape):
    layer = nn.Conv(kernel, cin, cout, jax.nn.relu, cross_correlation=cc, **kw)
    ps, st = luxc.setup(0, layer)
    x = _randn(*x_shape)
    y, _ = layer(jnp.asarray(x), ps, st)
    ref = np_conv(x, np.asarray(ps["weight"]), layer.stride, layer.pad, layer.dilation,
                  layer.groups, flip=not cc) + np.asarray(ps["bias"])
    np.testing.assert_allclose(y, np.maximum(ref, 0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cc", [False, True])
def test_conv_asymmetric_padding_gives_luxs_values(cc):
    # conv_tests.jl "Asymmetric Padding": Conv((3, 3), 1 => 1, relu; pad=(0, 1, 1, 2)) on ones
    # (28, 28), weight 1, bias 0 -> (27, 29) with y[1,1] = 6, y[2,2] = 9, y[end,1] = 4,
    # y[1,end] = 3, y[1,end-1] = 6, y[end,end] = 2. Julia's (W, H) pads are luxc's (H, W):
    # (1, 2, 0, 1); y[i, j] (W = i, H = j) is luxc's y[j, i].
    layer = nn.Conv((3, 3), 1, 1, jax.nn.relu, pad=(1, 2, 0, 1), cross_correlation=cc)
    ps = {"weight": jnp.ones((3, 3, 1, 1)), "bias": jnp.zeros(1)}
    y = np.asarray(layer(jnp.ones((1, 28, 28, 1)), ps, {})[0])[0, :, :, 0]
    assert y.shape == (29, 27)
    assert [y[0, 0], y[1, 1], y[0, -1], y[-1, 0], y[-2, 0], y[-1, -1]] == [6, 9, 4, 3, 6, 2]


@pytest.mark.parametrize("k", [(1,), (2,), (3,), (2, 3), (1, 2, 3)])
@pytest.mark.parametrize("kw", [dict(stride=1), dict(dilation="half"), dict(stride=3)])
def test_samepad_keeps_the_size_or_divides_it_by_the_stride(k, kw):
    # conv_tests.jl "Conv SamePad kernelsize $k" and pooling_tests.jl "SamePad windowsize".
    if kw.get("dilation") == "half":
        kw = dict(dilation=tuple(max(i // 2, 1) for i in k))
    x = jnp.ones((1, *(i + 3 for i in k), 1))
    expected = tuple(-(-(i + 3) // kw.get("stride", 1)) for i in k)
    layer = nn.Conv(k, 1, 1, pad=nn.SamePad(), **kw)
    assert layer(x, *luxc.setup(0, layer))[0].shape[1:-1] == expected
    pool = nn.MeanPool(k, pad=nn.SamePad())
    assert pool(x, {}, {})[0].shape[1:-1] == tuple(-(-(i + 3) // i) for i in k)
    # Lux puts the odd element of the padding first: ceil before, floor after.
    assert nn.Conv((4,), 1, 1, pad=nn.SamePad()).pad == ((2, 1),)


def test_conv_default_initialisers_and_parameter_count_are_luxs():
    # conv.jl init_conv_weight: kaiming_uniform(gain = calculate_gain(σ, √5)) over
    # fan_in = prod(k) * in ÷ groups; init_conv_bias: U(±1/√fan_in); parameterlength.
    layer = nn.Conv((3, 3), 6, 2, jax.nn.relu, groups=2)
    ps, _ = luxc.setup(0, layer)
    assert ps["weight"].shape == (3, 3, 3, 2)
    assert luxc.parameter_count(layer) == 3 * 3 * 6 * 2 // 2 + 2
    big = nn.Conv((5, 5), 64, 64, jax.nn.relu)
    w = np.asarray(luxc.setup(1, big)[0]["weight"])
    bound = math.sqrt(3) * 2 / math.sqrt(5 * 5 * 64)  # utils.jl: calculate_gain(relu, _) = 2
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound


def test_conv_bad_configuration_is_one_line_naming_the_argument():
    # conv_tests.jl: @test_throws DimensionMismatch Conv((2, 2), 3 => 10; groups=2).
    with pytest.raises(ValueError, match="Conv: in_chs=3 and out_chs=10 must be divisible by groups=2"):
        nn.Conv((2, 2), 3, 10, groups=2)
    with pytest.raises(ValueError, match=r"Conv: pad must be .*SamePad\(\).*received 'full'"):
        nn.Conv((2, 2), 3, 4, pad="full")
    with pytest.raises(ValueError, match=r"Conv: stride must be an int or 2 ints >= 1; received \(1, 0\)"):
        nn.Conv((2, 2), 3, 4, stride=(1, 0))


# --- ConvTranspose --------------------------------------------------------------------------------

ADJOINT_CASES = [  # kernel, in, out, keywords, input spatial size
    ((3, 3), 2, 4, {}, (5, 5)),
    ((3, 3), 2, 4, dict(stride=2, pad=1, outpad=1), (4, 5)),
    ((3, 5), 4, 6, dict(stride=(2, 3), pad=(0, 1, 2, 1), groups=2), (4, 3)),
    ((3,), 3, 6, dict(stride=2, dilation=2, groups=3, pad=nn.SamePad()), (7,)),
    ((2, 2, 2), 2, 2, dict(stride=2, outpad=(1, 0, 1)), (2, 3, 2)),
]


@pytest.mark.parametrize("cc", [False, True])
@pytest.mark.parametrize("kernel,cin,cout,kw,size", ADJOINT_CASES)
def test_conv_transpose_is_the_adjoint_of_conv_with_the_same_weight(cc, kernel, cin, cout, kw, size):
    ct = nn.ConvTranspose(kernel, cin, cout, use_bias=False, cross_correlation=cc, **kw)
    flat_pad = tuple(p for side in ct.pad for p in side)
    conv = nn.Conv(kernel, cout, cin, use_bias=False, cross_correlation=cc, pad=flat_pad,
                   stride=ct.stride, dilation=ct.dilation, groups=ct.groups)
    ps, st = luxc.setup(0, ct)
    assert ps["weight"].shape == luxc.setup(0, conv)[0]["weight"].shape == \
        (*kernel, cout // ct.groups, cin)
    x = jnp.asarray(_randn(2, *size, cin))
    y, _ = ct(x, ps, st)
    # Lux's conv_transpose_dims: (n - 1) s + 1 + (k - 1) d - (lo + hi) + outpad.
    lux_size = tuple((n - 1) * s + 1 + (k - 1) * d - lo - hi + o for n, s, d, k, (lo, hi), o in
                     zip(size, ct.stride, ct.dilation, kernel, ct.pad, ct.outpad))
    assert y.shape == (2, *lux_size, cout)
    z = jnp.asarray(_randn(*y.shape))
    cz, _ = conv(z, ps, st)
    assert cz.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(cz, x), jnp.vdot(z, y), rtol=1e-4)


def test_conv_transpose_sizes_and_errors_are_luxs():
    # conv_tests.jl "ConvTranspose": weight (3, 3, 4, 2) / (3, 3, 2, 2) with groups=2; SamePad
    # keeps the size; LuxDL/Lux.jl#534: SamePad, stride 2 on length 2 -> 4; outpad adds to the
    # size; LuxDL/Lux.jl#455: a channel mismatch is caught.
    def out(layer, x_shape):
        return layer(jnp.ones(x_shape), *luxc.setup(0, layer))[0].shape

    l1 = nn.ConvTranspose((3, 3), 2, 4, pad=nn.SamePad())
    l2 = nn.ConvTranspose((3, 3), 2, 4, groups=2, pad=nn.SamePad())
    assert luxc.setup(0, l1)[0]["weight"].shape == (3, 3, 4, 2)
    assert luxc.setup(0, l2)[0]["weight"].shape == (3, 3, 2, 2)
    assert out(l1, (3, 10, 10, 2)) == out(l2, (3, 10, 10, 2)) == (3, 10, 10, 4)
    assert out(nn.ConvTranspose((3, 5), 4, 4, jnp.tanh, pad=nn.SamePad(), groups=4),
               (2, 10, 11, 4)) == (2, 10, 11, 4)
    assert out(nn.ConvTranspose((3,), 2, 1, pad=nn.SamePad(), stride=2), (1, 2, 2)) == (1, 4, 1)
    m1, m2 = (nn.ConvTranspose((3, 5), 3, 6, stride=3, outpad=o) for o in (0, (1, 0)))
    assert out(m2, (2, 10, 11, 3))[1:3] == tuple(a + b for a, b in zip(out(m1, (2, 10, 11, 3))[1:3], (1, 0)))
    assert luxc.parameter_count(nn.ConvTranspose((3, 5, 3), 3, 6, groups=3)) == 45 * 18 // 3 + 6
    layer = nn.ConvTranspose((4, 4), 42, 16, stride=2, pad=1)
    with pytest.raises(nn.LayerShapeError, match=r"expects 42 features.*\(3, 28, 28, 46\)"):
        layer(jnp.ones((3, 28, 28, 46)), *luxc.setup(0, layer))
    with pytest.raises(ValueError, match=r"outpad=2 must be smaller than stride=\(2, 2\)"):
        nn.ConvTranspose((3, 3), 2, 2, stride=2, outpad=2)
    with pytest.raises(ValueError, match="in_chs=2 and out_chs=9 must be divisible by groups=2"):
        nn.ConvTranspose((2, 2), 2, 9, groups=2)


def test_conv_transpose_default_initialisers_are_luxs():
    # conv.jl: ConvTranspose(...; init_weight=glorot_uniform, init_bias=zeros32); glorot over
    # the (k..., out ÷ groups, in) weight: fan_in = prod(k)·out/groups, fan_out = prod(k)·in.
    layer = nn.ConvTranspose((5, 5), 64, 32, groups=2)
    ps, _ = luxc.setup(0, layer)
    bound = math.sqrt(6 / (25 * 16 + 25 * 64))
    w = np.abs(np.asarray(ps["weight"]))
    assert w.max() <= bound and w.max() > 0.99 * bound
    assert not np.asarray(ps["bias"]).any()


# --- Upsample, PixelShuffle -----------------------------------------------------------------------

def test_upsample_bilinear_gives_pytorchs_documented_values():
    # torch.nn.Upsample's docstring example: [[1, 2], [3, 4]], scale 2, bilinear.
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    half_pixel = nn.Upsample("bilinear", scale=2)(x, {}, {})[0][0, :, :, 0]
    np.testing.assert_allclose(half_pixel, [[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5],
                                            [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]])
    corners = nn.Upsample("bilinear", size=(4, 4), align_corners=True)(x, {}, {})[0][0, :, :, 0]
    np.testing.assert_allclose(corners, [[1.0, 4 / 3, 5 / 3, 2.0], [5 / 3, 2.0, 7 / 3, 8 / 3],
                                         [7 / 3, 8 / 3, 3.0, 10 / 3], [3.0, 10 / 3, 11 / 3, 4.0]],
                               rtol=1e-6)


def test_upsample_trilinear_with_aligned_corners_reproduces_a_linear_function():
    # A multilinear interpolant is exact on an affine function of the coordinates.
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (3, 4, 2)),
                                indexing="ij"), -1)
    f = lambda g: g @ np.array([0.5, -2.0, 3.0], np.float32) + 1.0  # noqa: E731
    y = nn.Upsample("trilinear", size=(5, 7, 3), align_corners=True)(
        jnp.asarray(f(grid))[None, ..., None], {}, {})[0]
    fine = np.stack(np.meshgrid(*(np.linspace(0, n - 1, m, dtype=np.float32)
                                  for n, m in ((3, 5), (4, 7), (2, 3))), indexing="ij"), -1)
    np.testing.assert_allclose(y[0, ..., 0], f(fine), rtol=1e-5, atol=1e-5)


def test_upsample_nearest_repeats_and_sizes_follow_luxs_tests():
    # conv_tests.jl "Upsample", "Size Correctness": sizes (8, 8), (8, 4); scales 2, (2, 1).
    x = jnp.asarray(_randn(2, 4, 4, 3))
    np.testing.assert_array_equal(nn.Upsample(scale=2)(x, {}, {})[0],
                                  np.repeat(np.repeat(x, 2, 1), 2, 2))
    np.testing.assert_array_equal(nn.Upsample(size=(8, 4))(x, {}, {})[0], np.repeat(x, 2, 1))
    for mode in ("nearest", "bilinear", "trilinear"):
        for kw, size in ((dict(size=(8, 4)), (8, 4)), (dict(scale=(2, 1)), (8, 4)),
                         (dict(scale=2), (8, 8))):
            assert nn.Upsample(mode, **kw)(x, {}, {})[0].shape == (2, *size, 3)


def test_upsample_and_pixel_shuffle_errors_name_the_argument():
    with pytest.raises(ValueError, match="give exactly one of scale= and size="):
        nn.Upsample("nearest", scale=2, size=(64, 64))
    with pytest.raises(ValueError, match="give exactly one of scale= and size="):
        nn.Upsample("nearest")
    with pytest.raises(ValueError, match=r"mode must be one of .*received 'linear'"):
        nn.Upsample("linear", scale=2)
    with pytest.raises(nn.LayerShapeError, match="axis 1 goes from 4 to 6"):
        nn.Upsample(size=(6, 8))(jnp.ones((1, 4, 4, 1)), {}, {})
    with pytest.raises(nn.LayerShapeError, match=r"channels divisible by r\^2 = 4"):
        nn.PixelShuffle(2)(jnp.ones((1, 3, 3, 6)), {}, {})


@pytest.mark.parametrize("r,x_shape", [(2, (3, 3, 6)), (3, (3, 4, 3, 9)), (2, (1, 2, 3, 2, 16))])
def test_pixel_shuffle_moves_channel_blocks_to_space(r, x_shape):
    # conv_tests.jl "PixelShuffle": (3, 6, 3) -> (6, 3, 3) and (3, 4, 9, 3) -> (9, 12, 1, 3) in
    # Julia's order; NNlib's pixel_shuffle reads channel c·r^D + Σ i_a r^(D-a) into y[r·s + i].
    x = _randn(*x_shape)
    y = np.asarray(nn.PixelShuffle(r)(jnp.asarray(x), {}, {})[0])
    d, c = x.ndim - 2, x.shape[-1] // r ** (x.ndim - 2)
    assert y.shape == (x.shape[0], *(s * r for s in x.shape[1:-1]), c)
    for index in itertools.product(*(range(n) for n in y.shape)):
        n, *pos, ch = index
        offsets = [p % r for p in pos]
        src = ch * r ** d + sum(i * r ** (d - 1 - a) for a, i in enumerate(offsets))
        assert y[index] == x[(n, *(p // r for p in pos), src)]


# --- Pooling ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,cls", [("max", nn.MaxPool), ("mean", nn.MeanPool), ("lp", nn.LPPool)])
@pytest.mark.parametrize("kw", [{}, dict(stride=1, pad=(1, 0, 0, 2)), dict(dilation=2, stride=(1, 2)),
                                dict(pad=nn.SamePad())])
def test_window_pools_equal_their_numpy_definition(op, cls, kw):
    x = np.abs(_randn(2, 7, 8, 3))
    layer = cls((3, 2), **kw)
    y, _ = layer(jnp.asarray(x), {}, {})
    np.testing.assert_allclose(y, np_pool(x, op, layer.window, layer.stride, layer.pad,
                                          layer.dilation), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op,name", [("max", "MaxPool"), ("mean", "MeanPool"), ("lp", "LPPool")])
def test_global_and_adaptive_pools_are_luxs_windows(op, name):
    # pooling_tests.jl: Adaptive((5, 5)) on 10×10 == pool with window 2; Adaptive((10, 5)) on
    # 20×20 == PoolDims(y, (2, 4)); Global == one window over all of (w, h), size (1, 1, c, b).
    x, y = np.abs(_randn(2, 10, 10, 3)), np.abs(_randn(2, 20, 20, 3))
    adaptive, glob = getattr(nn, "Adaptive" + name), getattr(nn, "Global" + name)
    np.testing.assert_allclose(adaptive((5, 5))(jnp.asarray(x), {}, {})[0],
                               np_pool(x, op, (2, 2), (2, 2), ((0, 0),) * 2, (1, 1)), rtol=1e-5)
    np.testing.assert_allclose(adaptive((10, 5))(jnp.asarray(y), {}, {})[0],
                               np_pool(y, op, (2, 4), (2, 4), ((0, 0),) * 2, (1, 1)), rtol=1e-5)
    g = glob()(jnp.asarray(x), {}, {})[0]
    assert g.shape == (2, 1, 1, 3)
    np.testing.assert_allclose(g, np_pool(x, op, (10, 10), (10, 10), ((0, 0),) * 2, (1, 1)),
                               rtol=1e-5)
    # Lux's adaptive window when out does not divide in: stride 7 // 3 = 2, window 7 - 2·2 = 3.
    z = np.abs(_randn(1, 7, 3))
    np.testing.assert_allclose(adaptive((3,))(jnp.asarray(z), {}, {})[0],
                               np_pool(z, op, (3,), (2,), ((0, 0),), (1,)), rtol=1e-5)


def test_lp_pools_with_p_3_and_upsample_have_finite_difference_gradients():
    x = jnp.asarray(np.abs(_randn(1, 4, 6, 2)) + 0.5)
    for layer in (nn.LPPool((2, 3), p=3), nn.GlobalLPPool(p=3), nn.AdaptiveLPPool((2, 2), p=3),
                  nn.Upsample("bilinear", size=(7, 9)), nn.MeanPool((2, 2), pad=1)):
        check_grads(lambda v, layer=layer: layer(v, {}, {})[0], (x,), order=1, modes=["rev"],
                    atol=2e-2, rtol=2e-2, eps=1e-2)


def test_pool_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"LPPool: p must be a number with 0 < p < inf; received 0"):
        nn.LPPool((2, 2), p=0)
    with pytest.raises(ValueError, match=r"MaxPool: dilation must be an int or 2 ints >= 1"):
        nn.MaxPool((2, 2), dilation=0)
    with pytest.raises(nn.LayerShapeError, match=r"AdaptiveMeanPool\(\(5, 5\)\) needs 2 spatial "
                                                 r"axes at least as large as \(5, 5\)"):
        nn.AdaptiveMeanPool((5, 5))(jnp.ones((1, 4, 8, 2)), {}, {})


def test_printouts_are_luxs():
    # Lux's Base.show methods (conv.jl, pooling.jl; PrettyPrinting.tuple_string prints one
    # number for an all-equal tuple); conv_tests.jl checks "groups=2", "2 => 4".
    assert nn.Conv((3, 3), 6, 2, jax.nn.relu, groups=2, pad=nn.SamePad()).summary() == \
        "Conv((3, 3), 6 => 2, relu, pad=1, groups=2)"
    assert nn.Conv((5,), 1, 1, cross_correlation=True, use_bias=False).summary() == \
        "Conv((5,), 1 => 1, use_bias=false, cross_correlation=true)"
    assert nn.ConvTranspose((3, 3), 2, 4, groups=2, stride=2, outpad=1).summary() == \
        "ConvTranspose((3, 3), 2 => 4, stride=2, groups=2, outpad=1)"
    assert nn.MaxPool((2, 2), pad=(0, 1, 0, 1), dilation=2, stride=(1, 2)).summary() == \
        "MaxPool((2, 2), pad=(0, 1, 0, 1), stride=(1, 2), dilation=2)"
    assert [nn.LPPool((2,), p=3).summary(), nn.GlobalMeanPool().summary(),
            nn.GlobalLPPool(p=3).summary(), nn.AdaptiveMaxPool((5, 5)).summary()] == \
        ["LPPool((2,), p=3)", "GlobalMeanPool()", "GlobalLPPool(p=3)", "AdaptiveMaxPool((5, 5))"]
    assert nn.Upsample("bilinear", scale=2).summary() == "Upsample('bilinear', scale=(2,))"
    assert "layer_1 = ConvTranspose((2, 2), 4 => 4, stride=2),  # 68 parameters" in repr(
        nn.Chain(nn.ConvTranspose((2, 2), 4, 4, stride=2), nn.PixelShuffle(2)))


# --- the family end to end: AutoXLA = AutoJAX, bf16, Stack, checkpoint, artifact ------------------

def _model():
    return nn.Chain(
        nn.Conv((3, 3), 1, 4, jax.nn.relu, pad=nn.SamePad()),
        nn.Stack(nn.Conv((3, 3), 4, 4, jnp.tanh, pad=nn.SamePad()), 2),
        nn.MaxPool((2, 2), dilation=2), nn.ConvTranspose((2, 2), 4, 4, jnp.tanh, stride=2),
        nn.LPPool((2, 2)), nn.AdaptiveMaxPool((2, 2)), nn.Upsample("bilinear", scale=2),
        nn.PixelShuffle(2), nn.MeanPool((2, 2)), nn.AdaptiveMeanPool((2, 2)),
        nn.Conv((1, 1), 1, 3, cross_correlation=True), nn.GlobalMeanPool(), nn.FlattenLayer(),
        nn.Dense(3, 2))


def _factory():
    """The family's objective, data (each image's mean and deviation to learn) and initial
    TrainState, the same at every call."""
    ps, st = luxc.setup(jax.random.key(0), _model())
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 1)).astype(np.float32)
    y = np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)
    return luxc.MSELoss(), (jnp.asarray(x), jnp.asarray(y)), luxc.TrainState(
        _model(), ps, st, optax.adam(1e-2))


def _losses(ad, n, ts=None, **kw):
    """``n`` steps of the family with ``ad`` from ``ts`` (default: its factory's): the losses,
    the first step's gradients and the state after them."""
    obj, data, fresh = _factory()
    ts = fresh if ts is None else ts
    out, first = [], None
    for _ in range(n):
        grads, loss, _, ts = luxc.training.single_train_step(ad, obj, data, ts, **kw)
        first = grads if first is None else first
        out.append(float(loss))
    return out, first, ts


@pytest.fixture(scope="module")
def eager_run():
    """The reference, 3 eager (AutoJAX) steps, computed once for the module: op by op, it is
    the costly part."""
    return _losses(luxc.AutoJAX(), 3)


@pytest.fixture(scope="module")
def compiled_run():
    """The factory's TrainState and 3 AutoXLA steps from it; TrainStates made from it share its
    compiled step."""
    start = _factory()[2]
    return start, _losses(luxc.AutoXLA(), 3, start)


def test_the_family_compiles_to_the_eager_step_and_runs_in_bf16(eager_run, compiled_run):
    eager, eager_grads, _ = eager_run
    compiled, grads, _ = compiled_run[1]
    for a, b in zip(jax.tree.leaves(eager_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    bf16 = _losses(luxc.AutoXLA(), 2, compile_options=luxc.CompileOptions(mixed_precision="bf16"))[0]
    np.testing.assert_allclose(bf16, compiled[:2], rtol=5e-2)


def test_the_family_round_trips_a_checkpoint(tmp_path, compiled_run):
    start, (_, _, ts) = compiled_run
    obj, data, _ = _factory()
    step = lambda t: luxc.training.single_train_step(luxc.AutoXLA(), obj, data, t)  # noqa: E731
    luxc.save_state(tmp_path / "c.safetensors", ts)
    # `like` holds the initial values (a load that kept them would fail) and shares the
    # compiled step.
    resumed = luxc.load_state(tmp_path / "c.safetensors", like=start)
    assert resumed.step == 3
    np.testing.assert_array_equal(step(resumed)[1], step(ts)[1])


@pytest.mark.slow
def test_the_family_trains_from_an_artifact_without_its_source(tmp_path, eager_run):
    # Exported here, run by `luxc run` in a fresh process that cannot import the model.
    luxc.export_step(*_factory(), tmp_path / "step.luxc")
    r = luxc_cli("run", "step.luxc", "--steps", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    losses = [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("step")]
    np.testing.assert_allclose(losses, eager_run[0], rtol=1e-4)


def test_lenet_as_a_true_convolution_gets_the_same_conv_passes_and_reverses_only_weights():
    # The flip is a reverse of the (small) weight inside the traced step: luxc's convolution
    # passes must see the same three forms as in a cross-correlation, and XLA must keep the same
    # convolutions and never reverse an activation.
    from luxc.examples import lenet

    def compiled(cc):
        model = nn.Chain(*(nn.Conv(c.kernel_size, c.in_chs, c.out_chs, c.activation,
                                   cross_correlation=cc) if isinstance(c, nn.Conv) else c
                           for c in lenet.make_model().layers))
        ps, st = luxc.setup(0, model)
        return luxc.compile_step(luxc.CrossEntropyLoss(logits=True), data,
                                 luxc.TrainState(model, ps, st, optax.adam(1e-3)))

    # lenet.factory's shapes (batch 32), drawn by numpy: jax.random compiles a program per shape
    x = np.random.default_rng(0).normal(size=(32, 28, 28, 1)).astype(np.float32)
    data = (jnp.asarray(x), jnp.asarray(np.eye(10, dtype=np.float32)[np.arange(32) % 10]))

    flipped, plain = compiled(False), compiled(True)
    assert [(r.name, r.rewrites) for r in flipped.pass_report] == \
        [(r.name, r.rewrites) for r in plain.pass_report]
    hlo = flipped.as_text("hlo")
    assert hlo.count(" convolution(") == plain.as_text("hlo").count(" convolution(")
    reversed_shapes = set(re.findall(r"= (f32\[[\d,]+\])\{[\d,]*\} reverse\(", hlo))
    assert reversed_shapes <= {"f32[5,5,1,6]", "f32[5,5,6,16]"}
