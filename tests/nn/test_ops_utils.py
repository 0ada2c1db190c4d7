"""luxc.ops and the utilities: recursive_*, precision converters, match_eltype, preferences."""

import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import luxc
from luxc import ops
from tests.support import run_python


def test_eachslice_returns_slices_along_the_axis():
    x = jnp.arange(6.0).reshape(2, 3)
    cols = ops.eachslice(x, 1)
    assert len(cols) == 3 and all(c.shape == (2,) for c in cols)
    np.testing.assert_array_equal(cols[2], [2.0, 5.0])
    with pytest.raises(ValueError, match="dims must be an axis"):
        ops.eachslice(x, 2)


def test_foldl_without_init_starts_from_the_first_element():
    assert ops.foldl_init(lambda a, b: a + b, [1, 2, 3]) == 6


def test_getproperty_returns_none_when_missing():
    assert ops.getproperty({"a": 1}, "a") == 1
    assert ops.getproperty({"a": 1}, luxc.Val("b")) is None
    assert ops.getproperty(object(), "nope") is None


def test_xlogx_and_xlogy_at_zero():
    assert float(ops.xlogx(0.0)) == 0.0
    assert float(ops.xlogy(0.0, 0.0)) == 0.0
    assert float(ops.xlogx(2.0)) == pytest.approx(2 * np.log(2))
    assert float(ops.xlogy(3.0, 2.0)) == pytest.approx(3 * np.log(2))
    # Lux.jl src/extended_ops.jl: the rrules of xlogx and xlogy return ZeroTangent when
    # iszero(x), in reverse and (here) forward mode alike: no -inf, no NaN.
    for diff in (jax.grad, jax.jacfwd):
        gx, gy = diff(ops.xlogy, argnums=(0, 1))(0.0, 0.0)
        assert (float(gx), float(gy)) == (0.0, 0.0)
        assert float(diff(ops.xlogx)(0.0)) == 0.0


def test_xlogy_gradient_matches_calculus():
    gx, gy = jax.grad(ops.xlogy, argnums=(0, 1))(3.0, 2.0)
    assert float(gx) == pytest.approx(np.log(2)) and float(gy) == pytest.approx(1.5)


def test_istraining():
    assert ops.istraining(True) and ops.istraining(luxc.Val(True))
    assert not ops.istraining(False)
    assert ops.istraining({"training": luxc.Val(True)})
    assert not ops.istraining({"training": luxc.Val(False)}) and not ops.istraining({})


def test_multigate_splits_the_feature_axis():
    x = jnp.arange(12.0).reshape(2, 6)
    a, b, c = ops.multigate(x, luxc.Val(3))
    np.testing.assert_array_equal(b, [[2.0, 3.0], [8.0, 9.0]])
    with pytest.raises(ValueError, match="not divisible into 4 chunks"):
        ops.multigate(x, 4)


def test_rsqrt_lowers_to_stablehlo_rsqrt():
    text = jax.jit(ops.rsqrt).lower(jnp.ones(3)).as_text()
    assert "stablehlo.rsqrt" in text and "stablehlo.sqrt" not in text
    assert float(ops.rsqrt(4.0)) == 0.5


@pytest.mark.parametrize("fn,args", [
    (luxc.recursive_map, (lambda a: a + 1, {"a": jnp.ones(2)})),
    (luxc.recursive_add_, ({"a": jnp.ones(2)}, {"a": jnp.ones(2)})),
    (luxc.recursive_copyto_, ({"a": np.zeros(2)}, {"a": np.ones(2)})),
    (luxc.recursive_make_zero, ({"a": jnp.ones(2)},)),
    (luxc.recursive_make_zero_, ({"a": np.ones(2)},)),
])
def test_recursive_functions_work_and_are_deprecated(fn, args):
    with pytest.warns(DeprecationWarning, match="jax.tree_util"):
        out = fn(*args)
    assert set(out) == {"a"}


def test_recursive_functions_values_and_in_place_numpy():
    x = {"a": np.ones(2), "b": (jnp.ones(3),)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = luxc.recursive_add_(x, {"a": np.ones(2), "b": (jnp.full(3, 2.0),)})
        assert out["a"] is x["a"] and x["a"].tolist() == [2.0, 2.0]
        np.testing.assert_array_equal(out["b"][0], [3.0, 3.0, 3.0])
        z = luxc.recursive_make_zero_(x)
        assert x["a"].tolist() == [0.0, 0.0] and float(jnp.sum(z["b"][0])) == 0.0


def test_recursive_eltype():
    assert luxc.recursive_eltype({"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2, jnp.float32)}) \
        == np.float32
    assert luxc.recursive_eltype(None) == np.bool_


def test_precision_converters_touch_only_floating_leaves():
    tree = {"w": jnp.ones(2, jnp.float32), "n": jnp.arange(3), "s": 3}
    for conv, dt in ((luxc.f16, jnp.float16), (luxc.bf16, ml_dtypes.bfloat16),
                     (luxc.f32, jnp.float32)):
        out = conv(tree)
        assert out["w"].dtype == dt and out["n"].dtype == tree["n"].dtype and out["s"] == 3


def test_f64_explains_how_to_enable_x64():
    with pytest.raises(RuntimeError, match="jax_enable_x64"):
        luxc.f64({"w": jnp.ones(2)})


def test_f64_works_with_x64_enabled():
    r = run_python("import jax, jax.numpy as jnp, luxc; "
                   "print(luxc.f64({'w': jnp.ones(2, jnp.float32)})['w'].dtype)",
                   env={"JAX_ENABLE_X64": "1"})
    assert r.stdout.strip() == "float64", r.stderr


def _dense_f32(key):
    layer = luxc.nn.Dense(2, 2)
    ps, st = luxc.setup(key, layer)
    return layer, ps, st


def test_match_eltype_none_is_a_no_op(key):
    layer, ps, st = _dense_f32(key)
    x = np.ones((1, 2), np.float64)
    assert luxc.match_eltype(layer, ps, st, x) is x


@pytest.mark.parametrize("mode", ["warn", "convert", "error"])
def test_match_eltype_modes(key, mode, monkeypatch):
    monkeypatch.setattr(luxc.nn._eltype, "_warned", set())
    monkeypatch.setattr(luxc._preferences, "_values", None)
    monkeypatch.setenv("LUXC_ELTYPE_MISMATCH_HANDLING", mode)
    layer, ps, st = _dense_f32(key)
    x = np.ones((1, 2), np.int32)
    if mode == "error":
        with pytest.raises(luxc.utils.EltypeMismatchError, match="layer with float32 parameters and states received int32 input"):
            luxc.match_eltype(layer, ps, st, x)
        return
    with pytest.warns(UserWarning, match="int32"):
        out = luxc.match_eltype(layer, ps, st, x)
    assert out.dtype == (np.float32 if mode == "convert" else np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per kind of mismatch, as Lux's maxlog=1
        luxc.match_eltype(layer, ps, st, x)
    monkeypatch.setattr(luxc._preferences, "_values", None)


def test_preferences_come_from_the_config_file(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[preferences]\nrecompile_check = "warn"\n')
    monkeypatch.setenv("LUXC_CONFIG", str(cfg))
    monkeypatch.delenv("LUXC_RECOMPILE_CHECK", raising=False)
    monkeypatch.setattr(luxc._preferences, "_values", None)
    assert luxc.preference("recompile_check") == "warn"
    cfg.write_text('[preferences]\nrecompile_check = "sometimes"\n')
    monkeypatch.setattr(luxc._preferences, "_values", None)
    with pytest.raises(ValueError, match="recompile_check must be one of none, warn, error"):
        luxc.preference("recompile_check")
    monkeypatch.setattr(luxc._preferences, "_values", None)


def test_foldl_init_accumulator_takes_the_type_op_gives():
    # extended_ops.jl: foldl_init(op, x, init) = foldl(op, x; init); Julia's
    # foldl(+, [0.5, 0.5]; init=0) == 1.0.
    assert float(ops.foldl_init(jnp.add, jnp.array([0.5, 0.5]), 0)) == 1.0
    assert ops.foldl_init(lambda a, b: a + b, [0.5, 0.5], 0) == 1.0


def test_foldl_init_with_an_accumulator_that_grows():
    grow = lambda acc, x: jnp.concatenate([acc, x[None] * 2])  # noqa: E731
    out = ops.foldl_init(grow, jnp.array([1.0, 2.0, 3.0]), jnp.zeros(1))
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0, 6.0])
    g = jax.grad(lambda init: jnp.sum(ops.foldl_init(grow, jnp.array([1.0, 2.0]), init)))(
        jnp.ones(1))
    np.testing.assert_array_equal(g, [1.0])


def test_foldl_init_scans_a_stable_carry_and_differentiates_init():
    f = lambda init: ops.foldl_init(lambda c, x: c * x, jnp.array([2.0, 3.0, 4.0]), init)  # noqa: E731
    assert "scan" in str(jax.make_jaxpr(f)(1.0))
    assert float(f(1.0)) == 24.0 and float(jax.grad(f)(1.0)) == 24.0


def test_converters_leave_numbers_alone_and_convert_complex_arrays():
    # eltype_conversion.jl: adapt_storage only touches arrays, floating ones to T and complex
    # ones to Complex{T}.
    out = luxc.f32({"c": np.ones(2, np.complex128), "s": 2.5, "n": 3})
    assert out["c"].dtype == jnp.complex64 and out["s"] == 2.5 and isinstance(out["s"], float)
    assert luxc.f16({"s": 2.5})["s"] == 2.5 and luxc.bf16({"s": 0.1})["s"] == 0.1
    for conv, dt in ((luxc.f16, "float16"), (luxc.bf16, "bfloat16")):
        with pytest.raises(TypeError, match=f"complex64 leaf has no {dt} complex counterpart"):
            conv({"c": jnp.ones(2, jnp.complex64)})
    assert luxc.bf16(jnp.ones(2)).dtype == ml_dtypes.bfloat16
