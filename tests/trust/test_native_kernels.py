"""Adversarial tests, round 3 part A (issue 28): a stranger's artifact never hands a native kernel
buffers of shapes it was not written for; a stranger's endless evaluation and stopped step end in
one line; manifest text is escaped and checked where the artifact is loaded.

The native-kernel adversary is the issue's: a step that also calls ``lax.linalg.lu`` (LAPACK's
``sgetrf`` through the "stable ABI" custom call ``lapack_sgetrf_ffi``) on an N×N matrix built
from the data, its factor's type rewritten to ``f32[1, 1]``, the manifest's hashes recomputed and
the signature dropped. Unchecked, ``sgetrf`` writes N·N floats into a one-float buffer."""

import dataclasses
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from click.testing import CliRunner
from jax import export as jax_export
from jax import lax
from jaxlib.mlir import ir

import luxc
from luxc.cli import main
from luxc.runtime._jax_internal import ir_context, serialize_module
from luxc.runtime.compiling._executable import _TARGET_VERSION, module_text
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.trust._native_calls import NativeCallCheck, check_module
from tests.support import luxc_cli_each
from tests.trust._artifacts import (
    LUXC,
    eager_losses,
    export_quietly,
    read_manifest,
    replace_file,
    run_luxc,
    step_data,
    unsigned,
    write_manifest,
)

N = 4  # the LU-factorised matrix is N×N


def _with_lu(h):
    # Built from the data: N×N, whatever the batch size.
    return h + 0.01 * jnp.sum(lax.linalg.lu(h.T @ h + jnp.eye(N))[0])


def _train_state():
    model = luxc.nn.Chain(luxc.nn.Dense(3, N), luxc.nn.WrappedFunction(_with_lu),
                          luxc.nn.Dense(N, 1))
    ps, st = luxc.setup(jax.random.key(0), model)
    return luxc.TrainState(model, ps, st, optax.adam(1e-2))


@pytest.fixture(scope="module")
def lu_template(tmp_path_factory):
    return export_quietly(luxc.MSELoss(), step_data(), _train_state(),
                          tmp_path_factory.mktemp("lu") / "lu.luxc")


@pytest.fixture
def honest(lu_template, tmp_path):
    """The LAPACK-calling artifact as its author wrote it, unsigned (a stranger's)."""
    d = tmp_path / "honest.luxc"
    shutil.copytree(lu_template, d)
    return unsigned(d)


def _forge_getrf(serialized: bytes) -> bytes:
    """``serialized`` (a ``.jaxexport``) with the LU factor of every ``lapack_sgetrf_ffi`` call
    declared ``f32[1, 1]`` (broadcast back to N×N for its users, so the module stays valid)."""
    exported = jax_export.deserialize(bytearray(serialized))
    text, count = module_text(exported.mlir_module_serialized), 0

    def forge(m: re.Match) -> str:
        nonlocal count
        count += 1
        name, rest, operand, factor, others = m.groups()
        # What the verifier would reject: the factor aliasing the N×N operand, the sharding rule.
        rest = re.sub(r"output_operand_aliases = \[#stablehlo[^>]*>\], ", "", rest)
        rest = re.sub(r", sdy\.sharding_rule = #sdy\.op_sharding_rule<.*?, custom>", "", rest)
        return (f"%forged{count}:3 = stablehlo.custom_call @lapack_sgetrf_ffi{rest} : "
                f"({operand}) -> (tensor<1x1xf32>, {others})\n"
                f"    %lu{name} = stablehlo.broadcast_in_dim %forged{count}#0, dims = [0, 1] : "
                f"(tensor<1x1xf32>) -> {factor}")

    pattern = (r"%(\w+):3 = stablehlo\.custom_call @lapack_sgetrf_ffi(\(.*?\) \{.*\}) : "
               r"\((tensor<[^)]*>)\) -> \((tensor<\d+x\d+xf32>), (tensor<\w+>, tensor<\w*>)\)")
    names = re.findall(pattern, text)
    text = re.sub(pattern, forge, text)
    for i, (name, *_) in enumerate(names, 1):
        text = re.sub(rf"%{name}#0\b", f"%lu{name}", text)
        text = re.sub(rf"%{name}#([12])\b", rf"%forged{i}#\1", text)
    assert count >= 1, "no lapack_sgetrf_ffi call to forge"
    with ir_context():
        data = serialize_module(ir.Module.parse(text), _TARGET_VERSION)
    return bytes(dataclasses.replace(exported, mlir_module_serialized=data).serialize())


@pytest.fixture(scope="module")
def forged_template(lu_template, tmp_path_factory):
    """The adversary's artifact: every module's LU factor declared f32[1, 1], hashes
    recomputed, no signature. Forged once; the commands refuse it without writing to it."""
    d = tmp_path_factory.mktemp("forged") / "forged.luxc"
    shutil.copytree(lu_template, d)
    for name in ("step.jaxexport", "forward.jaxexport", "evaluate.jaxexport"):
        replace_file(d, name, _forge_getrf((d / name).read_bytes()))
    return unsigned(d)


@pytest.fixture
def forged(forged_template, tmp_path):
    """A copy of the adversary's artifact, this test's to edit."""
    d = tmp_path / "forged.luxc"
    shutil.copytree(forged_template, d)
    return d


# ---------------------------------------------------------------- native kernels


def _reference_losses(steps):
    return eager_losses(_train_state(), steps)


def test_an_honest_unsigned_artifact_calling_lapack_trains_predicts_and_evaluates(honest):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = luxc.load(honest)
    assert loaded.executable_source == "compiled from StableHLO"  # the checked path
    losses, ts5 = _reference_losses(5)  # eager: its first 3 steps, then 2 more
    np.testing.assert_allclose(loaded.run(3, steps_per_call=1), losses[:3], rtol=1e-5)
    np.testing.assert_allclose(loaded.run(2, steps_per_call=2), losses[3:],
                               rtol=1e-5)  # the scanned K-step program is checked too
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)  # a batch never seen
    expected, _ = ts5.model(jnp.asarray(x), ts5.parameters, luxc.nn.testmode(ts5.states))
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-5, atol=1e-6)
    loss, _ = loaded.evaluate([x, x.sum(1, keepdims=True)])
    np.testing.assert_allclose(loss, luxc.MSELoss()(expected, x.sum(1, keepdims=True)),
                               rtol=1e-5)
    assert loaded.profile(steps=2)  # the op profile compiles it again, checked


FORGED_COMMANDS = {  # the case -> the command and its options (the artifact comes between)
    "run": ("run", "--steps", "2"),
    "predict": ("predict", "--input", "x.npy", "--out", "y.npy"),
    "profile": ("profile", "--steps", "2"),
    "profile-ops": ("profile", "--steps", "2", "--ops", "3"),
}


@pytest.fixture(scope="module")
def forged_runs(forged_template, tmp_path_factory):
    """Each command on the forged artifact, in a directory of its own, all in one process (a
    native kernel writing past its buffer would take that process down: no result at all)."""
    dirs = {case: tmp_path_factory.mktemp(f"forged-{case}") for case in FORGED_COMMANDS}
    for d in dirs.values():
        np.save(d / "x.npy", np.ones((5, 3), np.float32))
    runs = luxc_cli_each([(dirs[case], [command, forged_template, *options])
                          for case, (command, *options) in FORGED_COMMANDS.items()])
    return {case: (dirs[case], r) for case, r in zip(FORGED_COMMANDS, runs)}


@pytest.mark.parametrize("command", FORGED_COMMANDS)
def test_a_forged_lapack_result_shape_is_refused_in_one_line_never_a_crash(forged_runs,
                                                                          forged_template,
                                                                          command):
    cwd, r = forged_runs[command]
    forged = forged_template
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])  # an error, not a signal
    last = r.stderr.strip().splitlines()[-1]
    file = "forward.jaxexport" if command == "predict" else "step.jaxexport"
    assert last.startswith(f"Error: {forged} ({file}): its StableHLO calls the native kernel "
                           "lapack_sgetrf_ffi with (tensor<4x4xf32>) -> (tensor<1x1xf32>, "), last
    assert "which jax's own lowering never emits" in last and "recompile it" in last
    assert "Traceback" not in r.stderr and not (cwd / "y.npy").exists()


def test_the_forged_modules_are_refused_in_python_for_each_program(forged, lu_template):
    from luxc.runtime.artifacts._artifact import load_predictor

    with pytest.raises(ArtifactError, match=r"\(step\.jaxexport\): its StableHLO calls the "
                                            "native kernel lapack_sgetrf_ffi"):
        luxc.load(forged)
    with pytest.raises(ArtifactError, match=r"\(forward\.jaxexport\)"):
        load_predictor(forged)
    for name in ("step.jaxexport", "forward.jaxexport"):  # only the evaluation stays forged
        replace_file(forged, name, (lu_template / name).read_bytes())
    # refused at load, not at the first evaluation of a run; the step itself (now honest but
    # unsigned) is compiled from its StableHLO, never loaded as native code
    with (pytest.raises(ArtifactError, match=r"\(evaluate\.jaxexport\)"),
          pytest.warns(UserWarning, match="did not load the artifact's executable")):
        luxc.load(forged)


_S = jax.ShapeDtypeStruct
# Every LAPACK kernel jax's CPU lowering uses, reached through jax's public linear algebra.
_HONEST = {
    "lu (getrf)": (jnp.linalg.det, [_S((2, 5, 5), jnp.float32)]),
    "solve (getrf, trsm)": (jnp.linalg.solve, [_S((4, 4), jnp.float32), _S((4, 2), jnp.float32)]),
    "cholesky (potrf)": (jnp.linalg.cholesky, [_S((3, 3), jnp.float32)]),
    "qr (geqrf, orgqr)": (jnp.linalg.qr, [_S((5, 3), jnp.float32)]),
    "eigh (syevd)": (jnp.linalg.eigh, [_S((4, 4), jnp.float32)]),
    "eigh complex (heevd)": (jnp.linalg.eigh, [_S((4, 4), jnp.complex64)]),
    "svd (gesdd)": (lambda a: jnp.linalg.svd(a, full_matrices=False), [_S((3, 5), jnp.float32)]),
    "eig (geev)": (jnp.linalg.eig, [_S((4, 4), jnp.float32)]),
    "schur (gees)": (jax.scipy.linalg.schur, [_S((4, 4), jnp.float32)]),
    "hessenberg (gehrd)": (jax.scipy.linalg.hessenberg, [_S((4, 4), jnp.float32)]),
    "tridiagonal (sytrd)": (lax.linalg.tridiagonal, [_S((4, 4), jnp.float32)]),
    "gradient of solve": (jax.grad(lambda a: jnp.sum(jnp.linalg.solve(a, jnp.ones(4)))),
                          [_S((4, 4), jnp.float32)]),
}


@pytest.mark.parametrize("name", list(_HONEST))
def test_every_lapack_call_jax_itself_emits_passes_the_check(name):
    fn, avals = _HONEST[name]
    module = jax.jit(fn).lower(*avals).compiler_ir("stablehlo")
    assert "lapack_" in str(module)
    check_module(module, NativeCallCheck("art"))


def _getrf_module(result_types: str, operand: str = "tensor<3x4x4xf32>") -> ir.Module:
    factor = result_types.split(", ")[0]
    alias = ("output_operand_aliases = [#stablehlo.output_operand_alias<output_tuple_indices = "
             "[0], operand_index = 0, operand_tuple_indices = []>], ") if factor == operand else ""
    text = (f"func.func public @main(%a: {operand}) -> {factor} {{\n"
            f"  %0:3 = stablehlo.custom_call @lapack_sgetrf_ffi(%a) {{mhlo.backend_config = {{}}, "
            f"{alias}operand_layouts = [dense<[1, 2, 0]> : tensor<3xindex>], result_layouts = "
            "[dense<[1, 2, 0]> : tensor<3xindex>, dense<[1, 0]> : tensor<2xindex>, dense<0> : "
            f"tensor<1xindex>]}} : ({operand}) -> ({result_types})\n"
            f"  return %0#0 : {factor}\n}}")
    with ir_context():
        return ir.Module.parse(text)


@pytest.mark.parametrize("results, why", [
    ("tensor<3x4x4xf32>, tensor<3x4xi32>, tensor<3xi32>", None),
    ("tensor<3x1x1xf32>, tensor<3x4xi32>, tensor<3xi32>", "the factor smaller than the matrix"),
    ("tensor<3x4x4xf32>, tensor<3x2xi32>, tensor<3xi32>", "pivots not i32[..., min(m, n)]"),
    ("tensor<3x4x4xf32>, tensor<3x4xi64>, tensor<3xi32>", "pivots of another dtype"),
    ("tensor<3x4x4xf32>, tensor<3x4xi32>, tensor<1xi32>", "info not i32[batch]"),
    ("tensor<9x4x4xf32>, tensor<9x4xi32>, tensor<9xi32>", "a batch the operand does not have"),
])
def test_a_getrf_call_is_accepted_only_with_jaxs_own_shapes(results, why):
    module = _getrf_module(results)
    if why is None:
        check_module(module, NativeCallCheck("art"))
        return
    with pytest.raises(ArtifactError, match="art: its StableHLO calls the native kernel "
                                            r"lapack_sgetrf_ffi with \(tensor<3x4x4xf32>\) -> "):
        check_module(module, NativeCallCheck("art"))
    check_module(module, NativeCallCheck("art", allow_unchecked=True))  # the user's own choice


def test_a_kernel_luxc_cannot_rebuild_is_refused_unless_the_user_trusts_the_author():
    text = ("func.func public @main(%a: tensor<4xf32>) -> tensor<4xf32> {\n"
            "  %0 = stablehlo.custom_call @cu_threefry2x32_ffi(%a) : (tensor<4xf32>) -> "
            "tensor<4xf32>\n  return %0 : tensor<4xf32>\n}")
    with ir_context():
        module = ir.Module.parse(text)
    with pytest.raises(ArtifactError, match="calls the native kernel cu_threefry2x32_ffi, whose "
                                            "buffer shapes luxc cannot check on this machine"):
        check_module(module, NativeCallCheck("art"))
    check_module(module, NativeCallCheck("art", allow_unchecked=True))


# ---------------------------------------------------------------- hangs and signals


def _endless_evaluation(model, ps, st, data):
    # Trains normally; in test mode (what evaluate.jaxexport runs) it never ends: float32 c + 1
    # stops growing at 2**24, so c >= 0 stays true.
    x, y = data
    pred, new_st = model(x, ps, st)
    loss = jnp.mean((pred - y) ** 2)
    if not luxc.ops.istraining(st["layer_2"]):
        loss = loss + 0.0 * lax.stop_gradient(
            lax.while_loop(lambda c: c >= 0.0, lambda c: c + 1.0, jnp.sum(x)))
    return loss, new_st, {}


@pytest.fixture(scope="module")
def spinning_evaluation(tmp_path_factory):
    d = tmp_path_factory.mktemp("spin-eval")
    model = luxc.nn.Chain(luxc.nn.Dense(3, 1), luxc.nn.Dropout(0.0))
    ps, st = luxc.setup(jax.random.key(0), model)
    x, y = step_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        luxc.export_step(_endless_evaluation, (x, y), luxc.TrainState(model, ps, st,
                                                                     optax.sgd(0.1)), d / "art")
    (d / "art" / "manifest.sig").unlink()
    np.savez(d / "eval.npz", np.asarray(x), np.asarray(y))
    return d


def _start(*args, cwd):
    return subprocess.Popen([LUXC, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(stream, text):
    """Read ``stream`` until a line holding ``text`` (the child's readiness); the lines read."""
    lines = []
    for line in iter(stream.readline, ""):
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the process ended without printing {text!r}: {lines}")


def _interrupted(*args, ready, cwd, stream="stderr"):
    """Run luxc; once it printed ``ready`` on ``stream`` (its readiness), send SIGINT. Returns
    ``(returncode, stdout, stderr)``."""
    p = _start(*args, cwd=cwd)
    try:
        _wait_for(getattr(p, stream), ready)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    return p.returncode, out, err


def _log_steps(path):
    import json

    return [json.loads(row)["step"] for row in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_a_strangers_endless_evaluation_obeys_the_time_limit_and_keeps_the_log(
        spinning_evaluation, tmp_path):
    # The limit counts from the first step: step 1 (compiled before it) takes milliseconds, then
    # the evaluation spins a core until the limit; a limit reached while the evaluation still
    # compiles is the same refusal.
    r = run_luxc("run", spinning_evaluation / "art", "--steps", "2", "--eval-data",
                 spinning_evaluation / "eval.npz", "--time-limit", "2", "--log", "log.jsonl",
                 cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]  # an error, not SIGABRT (134) or a hang
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: the evaluation did not finish within the time limit; luxc stopped waiting for "
        "it (the state is the one before it)")
    assert "terminate called" not in r.stderr and "Traceback" not in r.stderr
    assert _log_steps(tmp_path / "log.jsonl") == [1]  # the row written before it is kept


@pytest.mark.slow
def test_the_first_ctrl_c_stops_a_strangers_endless_evaluation_with_a_checkpoint(
        spinning_evaluation, tmp_path):
    code, _, err = _interrupted(  # once step 1 is done: its evaluation never ends
        "run", spinning_evaluation / "art", "--steps", "3", "--eval-data",
        spinning_evaluation / "eval.npz", "--checkpoint", "ck", "--log", "log.jsonl",
        ready="step 1  loss", stream="stdout", cwd=tmp_path)
    assert code == 130, err[-2000:]
    # Ctrl-C came during the endless evaluation, or just before it (then it never started).
    assert re.fullmatch(r"interrupted at step 1( \(5 s after Ctrl-C, luxc stopped waiting for the "
                        r"artifact's computation\))?; the state is in ck",
                        err.strip().splitlines()[-1]), err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err
    assert _log_steps(tmp_path / "log.jsonl") == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = luxc.load(spinning_evaluation / "art")
    loaded.load_state(tmp_path / "ck" / "step-00000001.safetensors")
    assert loaded.step_count == 1


@pytest.mark.slow
def test_a_stop_request_ends_a_strangers_endless_evaluation_in_python(spinning_evaluation):
    # What the first Ctrl-C asks of luxc.load(DIR).evaluate, in a process of its own (the
    # computation it gives up on keeps a core busy until that process ends). The grace a stopped
    # call gets (5 s) is 1 s here: the same stop, 4 s less of a core spinning.
    script = (
        "import sys, warnings, numpy as np, luxc\n"
        "from luxc.runtime.trust import _guarded_call\n"
        "from luxc.runtime.trust._guarded_call import exit_now_if_abandoned\n"
        "_guarded_call.GRACE_SECONDS = 1.0\n"
        "warnings.simplefilter('ignore')\n"
        "loaded = luxc.load(sys.argv[1])\n"
        "data = np.load(sys.argv[2])\n"
        "try:\n"
        "    loaded.evaluate([data['arr_0'], data['arr_1']], stop=lambda: True)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e, flush=True)\n"
        "exit_now_if_abandoned(0)\n")
    r = subprocess.run([sys.executable, "-c", script, spinning_evaluation / "art",
                        spinning_evaluation / "eval.npz"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]  # left at once: no abort at shutdown
    assert r.stdout.strip() == ("StepInterrupted the evaluation had not finished 1 s after "
                                "Ctrl-C; luxc stopped waiting for it (the state is the one "
                                "before it)")


@pytest.mark.slow
def test_a_stopped_strangers_step_ends_in_one_line_with_a_checkpoint(endless, tmp_path):
    code, out, err = _interrupted("run", endless, "--steps", "2", "--checkpoint", "ck",
                                  ready="Ctrl-C stops it", cwd=tmp_path)
    assert code == 130, err[-2000:]
    # The note comes before the loop: a Ctrl-C that arrives before the first call starts stops
    # the run without starting it (no waiting to say); one that arrives during it waits 5 s.
    assert err.strip().splitlines()[-1] in (
        "interrupted at step 0 (5 s after Ctrl-C, luxc stopped waiting for the artifact's "
        "computation); the state is in ck", "interrupted at step 0; the state is in ck")
    assert "terminate called" not in err and "Traceback" not in err
    assert "ran 0 steps" in out
    assert [c.name for c in (tmp_path / "ck").glob("step-*")] == ["step-00000000.safetensors"]


# ---------------------------------------------------------------- manifest text


FORGED = "acc\nsigned      by this user's luxc key\x1b]52;c;aGk=\x07\x1b[8mhidden\u202e"


def _objective_with_a_stat(model, ps, st, data):
    x, y = data
    pred, st = model(x, ps, st)
    return jnp.mean((pred - y) ** 2), st, {"acc": jnp.mean(jnp.abs(pred - y) < 0.5)}


@pytest.fixture(scope="module")
def stat_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("stat")
    model = luxc.nn.Dense(3, 1)
    ps, st = luxc.setup(jax.random.key(0), model)
    x, y = step_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        luxc.export_step(_objective_with_a_stat, (x, y),
                         luxc.TrainState(model, ps, st, optax.sgd(0.1)), d / "art")
    np.savez(d / "eval.npz", np.asarray(x), np.asarray(y))
    np.savez(d / "three.npz", np.asarray(x), np.asarray(y), np.asarray(y))
    return d


@pytest.fixture
def stat_art(stat_template, tmp_path):
    shutil.copytree(stat_template, tmp_path, dirs_exist_ok=True)
    return tmp_path / "art"


def _edit_layout(art, **fields):
    m = read_manifest(art)
    m["layout"].update(fields)
    write_manifest(art, m)
    (art / "manifest.sig").unlink(missing_ok=True)


def test_luxcs_own_stat_names_never_take_the_logs_keys(stat_art):
    # Prefixed by where they come from: a refused name is never one luxc compile wrote.
    assert read_manifest(stat_art)["layout"]["stat_names"] == ["stats['acc']"]


def _assert_escaped(text):
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert not any(line.startswith("signed") for line in text.splitlines())


def test_stat_names_from_the_manifest_are_escaped_in_eval_rows_and_the_log(stat_art, tmp_path):
    _edit_layout(stat_art, stat_names=[FORGED])
    r = CliRunner().invoke(main, ["run", str(stat_art), "--steps", "1", "--eval-data",
                                  str(tmp_path / "eval.npz"), "--log", str(tmp_path / "log.jsonl")])
    assert r.exit_code == 0, r.output[-2000:]
    _assert_escaped(r.stdout)
    (row,) = [line for line in r.stdout.splitlines() if line.startswith("eval step 1")]
    assert "acc\\nsigned      by this user's luxc key\\x1b]52;c;aGk=\\x07" in row
    _assert_escaped((tmp_path / "log.jsonl").read_text())  # JSON escapes them itself


def test_data_names_from_the_manifest_are_escaped_in_dataset_errors(stat_art, tmp_path):
    _edit_layout(stat_art, data_names=[FORGED, "y"])
    r = CliRunner().invoke(main, ["run", str(stat_art), "--data", str(tmp_path / "three.npz")])
    assert r.exit_code == 1
    assert "holds 3 arrays; the step takes 2 (acc\\nsigned" in r.output
    _assert_escaped(r.output)


@pytest.mark.parametrize("names, message", [
    (["step"], "layout.stat_names holds step: a stat's name must be unique and not one of the "
               "log's own keys (step, loss, eval)"),
    (["loss"], "layout.stat_names holds loss:"),
    (5, "layout.stat_names must be a list of strings, one name per stat; found 5"),
    ([5], "layout.stat_names must be a list of strings, one name per stat; found [5]"),
    (["a", "b"], "layout.stat_names names 2 stats but layout.n_stats is 1"),
])
def test_stat_names_that_are_not_names_or_replace_the_logs_keys_are_refused_at_load(
        stat_art, names, message):
    _edit_layout(stat_art, stat_names=names)
    with pytest.raises(ArtifactError, match=re.escape(f"{stat_art}: manifest field {message}")):
        luxc.load(stat_art)
    r = CliRunner().invoke(main, ["run", str(stat_art), "--steps", "1"])
    assert r.exit_code == 1 and message in r.output.strip().splitlines()[-1]


@pytest.mark.parametrize("where", [".", "trace", "../art/trace"])
def test_profile_trace_never_writes_inside_the_artifact(stat_art, where, monkeypatch):
    monkeypatch.chdir(stat_art)
    before = sorted(p.name for p in stat_art.iterdir())
    r = CliRunner().invoke(main, ["profile", ".", "--steps", "1", "--trace", where])
    assert r.exit_code == 1
    assert f"--trace {where} is inside the artifact ., which it would destroy" in r.output
    assert sorted(p.name for p in stat_art.iterdir()) == before


def test_float64_lapack_calls_of_a_module_exported_with_x64_pass_the_check():
    with jax.enable_x64(True):
        module = jax.jit(jnp.linalg.solve).lower(_S((4, 4), jnp.float64),
                                                 _S((4, 1), jnp.float64)).compiler_ir("stablehlo")
    assert "lapack_dgetrf_ffi" in str(module) and "lapack_dtrsm_ffi" in str(module)
    check_module(module, NativeCallCheck("art"))  # checked in a process without x64


def test_a_getrf_call_placed_on_devices_by_the_module_is_refused():
    honest = str(_getrf_module("tensor<3x4x4xf32>, tensor<3x4xi32>, tensor<3xi32>"))
    placed = honest.replace("mhlo.backend_config = {}",
                            'mhlo.backend_config = {}, mhlo.sharding = "{devices=[1,2,1]<=[2]}"')
    assert placed != honest
    with ir_context():
        module = ir.Module.parse(placed)
    with pytest.raises(ArtifactError, match="which jax's own lowering never emits"):
        check_module(module, NativeCallCheck("art"))


def test_a_module_calling_kernels_in_too_many_ways_is_refused_before_any_is_rebuilt(monkeypatch):
    from luxc.runtime.trust import _native_calls as native_calls

    monkeypatch.setattr(native_calls, "MAX_DISTINCT_CALLS", 2)
    module = jax.jit(lambda a, b, c: [jnp.linalg.det(m) for m in (a, b, c)]).lower(
        _S((4, 4), jnp.float32), _S((5, 5), jnp.float32), _S((6, 6), jnp.float32))
    with pytest.raises(ArtifactError, match="calls native kernels in 3 different ways; luxc "
                                            "checks at most 2"):
        check_module(module.compiler_ir("stablehlo"), NativeCallCheck("art"))


def _spin(h):
    return h + 0.0 * lax.stop_gradient(
        lax.while_loop(lambda c: c >= 0.0, lambda c: c + 1.0, jnp.sum(h)))


@pytest.mark.slow
def test_ctrl_c_stops_a_strangers_endless_model_in_predict(tmp_path):
    model = luxc.nn.Chain(luxc.nn.Dense(3, 1), luxc.nn.WrappedFunction(_spin))
    ps, st = luxc.setup(jax.random.key(0), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        luxc.export_step(luxc.MSELoss(), step_data(), luxc.TrainState(model, ps, st, optax.sgd(0.1)),
                         tmp_path / "spin")
    (tmp_path / "spin" / "manifest.sig").unlink()
    np.save(tmp_path / "x.npy", np.ones((5, 3), np.float32))
    code, _, err = _interrupted("predict", tmp_path / "spin", "--input", "x.npy", "--out",
                                "y.npy", ready="Ctrl-C stops it", cwd=tmp_path)
    assert code == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "luxc: interrupted (Ctrl-C)"
    assert "terminate called" not in err and not (tmp_path / "y.npy").exists()
