"""dot_bf16_batched: golden StableHLO in -> out, what it leaves alone, the bf16 step within
bfloat16's rounding of the float32 step, and the compile again without it (the bits of the
pipeline without it) wherever XLA does not hand its dots to YNNPACK (where they would fail when
the step runs, or run slower)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc.passes import dot_bf16_batched
from luxc.runtime.compiling._unclaimed_dots import batched_bf16_dots
from tests.passes._inputs import normal
from tests.support import dot_module, run_pass_body


def _run(text: str) -> tuple[list[str], int]:
    return run_pass_body(text, "dot_bf16_batched")



def test_a_batched_bf16_dot_gets_a_float32_result_and_one_convert():
    body, rewrites = _run(dot_module("2x16x8xbf16", "2x8x12xbf16", "2x16x12xbf16",
                                  "batching_dims = [0] x [0], contracting_dims = [2] x [1]"))
    assert rewrites == 1
    assert body == [
        "%0 = stablehlo.dot_general %arg0, %arg1, batching_dims = [0] x [0], contracting_dims = "
        "[2] x [1] : (tensor<2x16x8xbf16>, tensor<2x8x12xbf16>) -> tensor<2x16x12xf32>",
        "%1 = stablehlo.convert %0 : (tensor<2x16x12xf32>) -> tensor<2x16x12xbf16>",
        "return %1 : tensor<2x16x12xbf16>",
    ]


def test_a_left_operand_contracted_before_its_rows_is_transposed_and_pinned():
    # The gradient p^T . g of attention: the left operand [b, s, t] is contracted over s.
    body, rewrites = _run(dot_module("2x8x16xbf16", "2x8x12xbf16", "2x16x12xbf16",
                                  "batching_dims = [0] x [0], contracting_dims = [1] x [1]"))
    assert rewrites == 1
    assert body == [
        "%0 = stablehlo.transpose %arg0, dims = [0, 2, 1] "
        ": (tensor<2x8x16xbf16>) -> tensor<2x16x8xbf16>",
        "%1 = stablehlo.reshape %0 : (tensor<2x16x8xbf16>) -> tensor<1x2x16x8xbf16>",
        "%2 = stablehlo.optimization_barrier %1 : tensor<1x2x16x8xbf16>",
        "%3 = stablehlo.reshape %2 : (tensor<1x2x16x8xbf16>) -> tensor<2x16x8xbf16>",
        "%4 = stablehlo.dot_general %3, %arg1, batching_dims = [0] x [0], contracting_dims = "
        "[2] x [1] : (tensor<2x16x8xbf16>, tensor<2x8x12xbf16>) -> tensor<2x16x12xf32>",
        "%5 = stablehlo.convert %4 : (tensor<2x16x12xf32>) -> tensor<2x16x12xbf16>",
        "return %5 : tensor<2x16x12xbf16>",
    ]


def test_operands_that_are_transposes_are_kept_row_major():
    # The forward p.v as jax writes it, vT.pT: both operands transposes. XLA gives a transpose a
    # permuted layout, YNNPACK rejects it, and XLA runs the dot in float32 behind converts.
    text = """func.func @main(%arg0: tensor<2x12x8xbf16>, %arg1: tensor<2x16x12xbf16>) -> tensor<2x8x16xbf16> {
  %0 = stablehlo.transpose %arg0, dims = [0, 2, 1] : (tensor<2x12x8xbf16>) -> tensor<2x8x12xbf16>
  %1 = stablehlo.transpose %arg1, dims = [0, 2, 1] : (tensor<2x16x12xbf16>) -> tensor<2x12x16xbf16>
  %2 = stablehlo.dot_general %0, %1, batching_dims = [0] x [0], contracting_dims = [2] x [1] : (tensor<2x8x12xbf16>, tensor<2x12x16xbf16>) -> tensor<2x8x16xbf16>
  return %2 : tensor<2x8x16xbf16>
}"""
    body, rewrites = _run(text)
    assert rewrites == 1
    assert [line.split(" = ")[1].split(" ")[0] for line in body[:-2]] == [
        "stablehlo.transpose", "stablehlo.transpose",
        "stablehlo.reshape", "stablehlo.optimization_barrier", "stablehlo.reshape",
        "stablehlo.reshape", "stablehlo.optimization_barrier", "stablehlo.reshape",
        "stablehlo.dot_general"]
    assert "contracting_dims = [2] x [1]" in body[-3] and body[-3].endswith("-> tensor<2x8x16xf32>")


def test_batch_axes_after_the_others_are_kept_in_their_pairs():
    # jnp.einsum("bthd,bshd->bhts") before XLA moves the batch axes: (0, 2) x (0, 2).
    body, rewrites = _run(dot_module("2x16x3x8xbf16", "2x12x3x8xbf16", "2x3x16x12xbf16",
                                  "batching_dims = [0, 2] x [0, 2], contracting_dims = [3] x [3]"))
    assert rewrites == 1
    assert "batching_dims = [0, 2] x [0, 2], contracting_dims = [3] x [3]" in body[0]
    assert body[0].endswith("-> tensor<2x3x16x12xf32>")


@pytest.mark.parametrize("lhs, rhs, out, dims", [
    ("2x16x8xf32", "2x8x12xf32", "2x16x12xf32", "batching_dims = [0] x [0], contracting_dims = [2] x [1]"),
    ("2x16x8xbf16", "2x8x12xbf16", "2x16x12xf32", "batching_dims = [0] x [0], contracting_dims = [2] x [1]"),
    ("2x16x8xf16", "2x8x12xf16", "2x16x12xf16", "batching_dims = [0] x [0], contracting_dims = [2] x [1]"),
    ("16x8xbf16", "8x12xbf16", "16x12xbf16", "contracting_dims = [1] x [0]"),
    ("2x1x8xbf16", "2x8x12xbf16", "2x1x12xbf16", "batching_dims = [0] x [0], contracting_dims = [2] x [1]"),
    ("2x4x4xbf16", "2x4x4xbf16", "2x4x4xbf16", "batching_dims = [0] x [0], contracting_dims = [2] x [1]"),
    ("2x16x2x4xbf16", "2x2x4x12xbf16", "2x16x12xbf16",
     "batching_dims = [0] x [0], contracting_dims = [2, 3] x [1, 2]"),
], ids=["f32", "already-f32-result", "f16", "no-batch-axes", "vector", "all-under-8",
        "two-contracting-axes"])
def test_other_dots_are_left_alone(lhs, rhs, out, dims):
    body, rewrites = _run(dot_module(lhs, rhs, out, dims))
    assert rewrites == 0 and len(body) == 2


def _attention_step():
    def attend(self, x):
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        heads = [t.reshape(4, 16, 2, 8) for t in (q, k, v)]
        s = jnp.einsum("bthd,bshd->bhts", heads[0], heads[1])
        o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), heads[2])
        return self.out(o.reshape(x.shape))

    model = luxc.compact(qkv=luxc.nn.Dense(16, 48), out=luxc.nn.Dense(16, 16))(attend)
    ps, st = luxc.setup(0, model)
    x = normal(1, (4, 16, 16))
    return (x, jnp.tanh(x)), luxc.TrainState(model, ps, st, optax.sgd(0.1))


def _compiled(passes="default", xla_options=None, mixed_precision="bf16"):
    data, ts = _attention_step()
    options = luxc.CompileOptions(passes=passes, mixed_precision=mixed_precision,
                                  xla_options=xla_options or {})
    cs = luxc.compile_step(luxc.MSELoss(), data, ts, compile_options=options)
    return cs, cs(ts, data)


@pytest.fixture(scope="module")
def bf16_attention():
    """The bf16 attention step with the default pipeline and its first step's outputs, compiled
    once for the tests that read it."""
    return _compiled()


def _rewrites(cs) -> int:
    return sum(r.rewrites for r in cs.pass_report if r.name == dot_bf16_batched.NAME)


def _close_within_bf16(out, reference):
    """``out`` (a bf16 step) within bfloat16's rounding of ``reference`` (the float32 step): the
    loss to 2^-7, each gradient to 2^-5 of its norm (measured: 0.5-1.7%)."""
    (g1, l1, _, _), (g0, l0, _, _) = out, reference
    assert abs(float(l1) - float(l0)) <= 2.0**-7 * abs(float(l0))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 2.0**-5 * np.linalg.norm(b)


def _same_bits(out, reference):
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


_WITHOUT = [p for p in luxc.passes.default_pipeline("cpu") if p != dot_bf16_batched.NAME]


def test_the_attention_step_keeps_its_values_and_every_dot_is_ynnpacks(bf16_attention):
    cs, out = bf16_attention
    # q.k^T and p.v, and the two gradients of each
    assert _rewrites(cs) == 6
    # all six in bfloat16: none upcast to float32 because an operand was a transpose (the
    # forward p.v and its gradient were, before operands were pinned row-major)
    claimed, unclaimed = batched_bf16_dots(cs.as_text("hlo"))
    assert len(claimed) == 6 and unclaimed == []
    _, reference = _compiled(mixed_precision=None)
    _close_within_bf16(out, reference)


def test_with_ynnpack_fusions_off_the_step_is_compiled_again_without_the_pass():
    # XLA would upcast the dots to float32 and the pinned transposes would only cost time.
    cs, out = _compiled(xla_options={"xla_cpu_experimental_ynn_fusion_type": ""})
    assert _rewrites(cs) == 0
    assert dot_bf16_batched.NAME not in [r.name for r in cs.pass_report]
    assert batched_bf16_dots(cs.as_text("hlo")) == ([], [])
    # compiled again with the rest of the pipeline: that program's bits
    _same_bits(out, _compiled(passes=_WITHOUT,
                              xla_options={"xla_cpu_experimental_ynn_fusion_type": ""})[1])


def test_a_dot_ynnpack_leaves_out_is_never_run(monkeypatch):
    # Without the pins XLA folds the transposes into the dots' layouts: YNNPACK rejects the dots
    # and XLA:CPU's own batched-dot kernel would fail when the step runs ("Unsupported element
    # type for DotThunk::Execute: BF16 x BF16 = F32").
    monkeypatch.setattr(dot_bf16_batched, "row_major", lambda value: value)
    cs, out = _compiled()
    assert _rewrites(cs) == 0
    _same_bits(out, _compiled(passes=_WITHOUT)[1])


_HLO = """\
%fused_computation.1 (param_0: bf16[2,16,8], param_1: bf16[2,8,12]) -> f32[2,16,12] {
  %param_0 = bf16[2,16,8]{2,1,0} parameter(0)
  %param_1 = bf16[2,8,12]{2,1,0} parameter(1)
  ROOT %dot.1 = f32[2,16,12]{2,1,0} dot(%param_0, %param_1), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

ENTRY %main (a: bf16[2,16,8], b: bf16[2,8,12], c: f32[2,8,16]) -> f32[2,16,12] {
  %a = bf16[2,16,8]{2,1,0} parameter(0)
  %b = bf16[2,8,12]{2,1,0} parameter(1)
  %c = f32[2,8,16]{2,1,0} parameter(2)
  %ynn_fusion = f32[2,16,12]{2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %transpose.2 = bf16[2,8,16]{1,2,0} transpose(%a), dimensions={0,2,1}
  %dot.2 = f32[2,16,12]{2,1,0} dot(%transpose.2, %b), lhs_batch_dims={0}, lhs_contracting_dims={1}, rhs_batch_dims={0}, rhs_contracting_dims={1}
  %dot.3 = f32[2,16,16]{2,1,0} dot(%c, %c), lhs_batch_dims={0}, lhs_contracting_dims={1}, rhs_batch_dims={0}, rhs_contracting_dims={1}
  ROOT %add = f32[2,16,12]{2,1,0} add(%ynn_fusion, %dot.2)
}
"""


def test_the_hlo_reader_sorts_bf16_dots_by_whether_ynnpack_runs_them():
    # dot.3 multiplies float32 operands: any kernel runs it.
    assert batched_bf16_dots(_HLO) == (["dot.1"], ["dot.2"])


def test_an_artifact_of_the_bf16_attention_step_keeps_the_pass_and_trains_as_compiled(tmp_path,
                                                                                        bf16_attention):
    data, ts = _attention_step()
    options = luxc.CompileOptions(mixed_precision="bf16")
    manifest = luxc.export_step(luxc.MSELoss(), data, ts, tmp_path / "step.luxc",
                                compile_options=options)
    assert [r.rewrites for r in manifest.pass_report if r.name == dot_bf16_batched.NAME] == [6]
    loaded = luxc.load(tmp_path / "step.luxc")
    _, reference = bf16_attention
    _, loss, _ = loaded(loaded.state, loaded.data)  # the artifact's own state and batch
    assert float(loss) == float(reference[1])


def test_a_model_that_convolves_and_attends_is_compiled_again_without_the_pass():
    # luxc turns YNNPACK's fusions off for a module that convolves (runtime/compiling/_options.py)
    def embed_and_attend(self, x):
        h = self.conv(x).reshape(4, 64, 8)  # 64 pixels of 8 features
        s = jnp.einsum("btd,bsd->bts", h, h)
        return jnp.einsum("bts,bsd->btd", jax.nn.softmax(s, axis=-1), h)

    model = luxc.compact(conv=luxc.nn.Conv((3, 3), 1, 8, pad=1))(embed_and_attend)
    ps, st = luxc.setup(0, model)
    x = normal(1, (4, 8, 8, 1))
    ts = luxc.TrainState(model, ps, st, optax.sgd(0.1))
    y = jnp.zeros((4, 64, 8))
    outs = {}
    for name, passes in (("default", "default"), ("without", _WITHOUT)):
        cs = luxc.compile_step(luxc.MSELoss(), (x, y), ts, compile_options=luxc.CompileOptions(
            passes=passes, mixed_precision="bf16"))
        outs[name] = cs(ts, (x, y))
        if name == "default":
            assert dot_bf16_batched.NAME not in [r.name for r in cs.pass_report]
    # the same program as the pipeline without the pass: the same bits
    for a, b in zip(jax.tree.leaves(outs["default"]), jax.tree.leaves(outs["without"])):
        np.testing.assert_array_equal(a, b)


def test_an_artifact_whose_dots_xla_cannot_run_here_is_refused_at_load(tmp_path, monkeypatch):
    # An artifact written with the dots YNNPACK rejects (the transposes unpinned, and the
    # compile-again step skipped, as a stranger's luxc or another XLA may have done).
    from luxc.runtime.artifacts import _artifact
    from luxc.runtime.files import ArtifactError

    data, ts = _attention_step()
    with monkeypatch.context() as m:
        m.setattr(dot_bf16_batched, "row_major", lambda value: value)
        m.setattr(_artifact, "settle", lambda *args: None)
        luxc.export_step(luxc.MSELoss(), data, ts, tmp_path / "step.luxc",
                         compile_options=luxc.CompileOptions(mixed_precision="bf16"))
    with pytest.raises(ArtifactError, match=r"step\.luxc: XLA:CPU here cannot run \d+ of the "
                                            r"step's batched bfloat16 dots \(dot\.\d+") as e:
        luxc.load(tmp_path / "step.luxc")
    # `luxc run` / `luxc inspect` print it in the command line's words
    from luxc.cli._wording import cli_words

    assert str(e.value).endswith("export the step again on this machine (luxc.export_step), "
                                 "which compiles it without dot_bf16_batched")
    assert cli_words(str(e.value)).endswith("compile the step again on this machine (luxc "
                                            "compile), which compiles it without dot_bf16_batched")
