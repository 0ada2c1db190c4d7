"""dot_f32_accumulate: golden StableHLO in -> out, what it leaves alone, and compiled = eager
within the bfloat16 rounding of the result (the unrewritten dot, run by jax, is the reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn
from tests.passes._inputs import normal
from tests.support import dot_module, run_pass_body


def _run(text: str) -> tuple[list[str], int]:
    return run_pass_body(text, "dot_f32_accumulate")



def test_a_bf16_dot_gets_a_float32_result_and_one_convert():
    body, rewrites = _run(dot_module("4x8xbf16", "8x3xbf16", "4x3xbf16", "contracting_dims = [1] x [0]"))
    assert rewrites == 1
    assert body == [
        "%0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] "
        ": (tensor<4x8xbf16>, tensor<8x3xbf16>) -> tensor<4x3xf32>",
        "%1 = stablehlo.convert %0 : (tensor<4x3xf32>) -> tensor<4x3xbf16>",
        "return %1 : tensor<4x3xbf16>",
    ]


def test_float32_mixed_and_batched_dots_are_left_alone():
    for lhs, rhs, out, dims in [
        ("4x8xf32", "8x3xf32", "4x3xf32", "contracting_dims = [1] x [0]"),
        ("4x8xbf16", "8x3xbf16", "4x3xf32", "contracting_dims = [1] x [0]"),
        ("2x4x8xbf16", "2x8x3xbf16", "2x4x3xbf16",
         "batching_dims = [0] x [0], contracting_dims = [2] x [1]"),
    ]:
        body, rewrites = _run(dot_module(lhs, rhs, out, dims))
        assert rewrites == 0 and len(body) == 2


def test_a_bf16_step_with_the_pass_equals_the_step_without_it_within_bf16_rounding():
    model = nn.Chain(nn.Dense(6, 16, jnp.tanh), nn.Dense(16, 3))
    ps, st = luxc.setup(0, model)
    x = normal(1, (32, 6))
    y = jax.nn.one_hot(jnp.arange(32) % 3, 3)
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    out = {}
    for name, pipeline in (("with", ["dot_f32_accumulate"]), ("without", "none")):
        cs = luxc.compile_step(luxc.CrossEntropyLoss(logits=True), (x, y), ts, compile_options=
                               luxc.CompileOptions(passes=pipeline, mixed_precision="bf16"))
        if name == "with":
            assert cs.pass_report[0].rewrites == 5
            dots = [d for d in cs.as_text("optimized").splitlines() if "stablehlo.dot_general" in d]
            # bf16 operands, accumulated and returned in float32
            assert len(dots) == 5 and all("bf16>, tensor<" in d and d.endswith("xf32>") for d in dots)
        out[name] = cs(ts, (x, y))
    (g1, l1, _, _), (g0, l0, _, _) = out["with"], out["without"]
    assert abs(float(l1) - float(l0)) <= 2.0**-7 * abs(float(l0))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2.0**-6 * float(jnp.max(jnp.abs(b))))
