"""The luxc command, run in subprocesses as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.support import luxc_cli, luxc_cli_each

pytestmark = pytest.mark.slow

FACTORY = textwrap.dedent("""
    import jax, jax.numpy as jnp, optax, luxc
    from luxc import nn

    def factory():
        model = nn.Chain(nn.Dense(3, 16, jax.nn.relu), nn.Dense(16, 1))
        ps, st = luxc.setup(jax.random.key(0), model)
        x = jnp.linspace(-1, 1, 24).reshape(8, 3)
        y = jnp.sum(x, axis=1, keepdims=True)
        return luxc.MSELoss(), (x, y), luxc.TrainState(model, ps, st, optax.adam(1e-2))

    def broken():
        raise ValueError("no data today")

    def bad_objective():
        loss, data, ts = factory()
        return (lambda m, p, s, d: (jnp.ones(3), s, {})), data, ts
""")


def assert_one_line_error(r, *fragments):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, r.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "model_src.py").write_text(FACTORY)
    return d


@pytest.fixture(scope="module")
def artifact(workdir):
    r = luxc_cli("compile", "model_src.py:factory", "--out", "step.luxc", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "wrote step.luxc" in r.stdout
    return workdir / "step.luxc"


def _copy(artifact, copy, manifest_text=None, flip_executable=False, **fields):
    """A copy of ``artifact`` at ``copy``: one byte of its executable flipped, its manifest's
    top-level ``fields`` replaced (a dict updates the field) or its manifest ``manifest_text``."""
    shutil.copytree(artifact, copy)
    if flip_executable:
        blob = bytearray((copy / "executable.bin").read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (copy / "executable.bin").write_bytes(bytes(blob))
    manifest = json.loads((copy / "manifest.json").read_text())
    for name, value in fields.items():
        manifest[name] = {**manifest[name], **value} if isinstance(value, dict) else value
    (copy / "manifest.json").write_text(manifest_text or json.dumps(manifest))
    return copy


COMPILE_ERRORS = [
    ("missing.py:factory", "SPEC file not found: missing.py"),
    ("model_src.py", "bad SPEC"),
    ("model_src.py:nothing", "has no callable 'nothing'"),
    ("model_src.py:broken", "factory model_src.py:broken raised ValueError: no data today"),
    ("no_such_module:factory", "cannot import module 'no_such_module'"),
    ("model_src.py:bad_objective", "must return a scalar loss"),
]


def _cases(mkdir, artifact, workdir):
    """Each case: (the directory it runs in, its commands, run there in order). The shipped
    copy runs first, before any command of the process imported the model's source."""
    cases = {}
    d = mkdir("shipped")
    cases["shipped"] = (d, [["run", shutil.copytree(artifact, d / "shipped.luxc"), "--steps",
                             "4", "--save-state", "final.safetensors"]])
    cases["profile"] = (workdir, [["profile", "model_src.py:factory", "--steps", "5", "--trace",
                                   "trace"]])
    cases["inspect"] = (workdir, [["inspect", artifact], ["inspect", artifact, "--json"]])
    cases["steps per call"] = (mkdir("k"), [["run", artifact, "--steps", "7",
                                             "--steps-per-call", "3"]])
    cases["every"] = (mkdir("every"), [["run", artifact, "--steps", "30", "--every", "10",
                                        "--plot", "loss.png"]])
    cases["quiet"] = (mkdir("quiet"), [["run", artifact, "--steps", "3", "--quiet"]])
    d = mkdir("npz")
    np.savez(d / "zeros.npz", np.zeros((8, 3), np.float32), np.zeros((8, 1), np.float32))
    np.savez(d / "wrong.npz", np.zeros((4, 3), np.float32), np.zeros((4, 1), np.float32))
    cases["npz"] = (d, [["run", artifact, "--steps", "1", "--data", d / "zeros.npz"],
                        ["run", artifact, "--steps", "1", "--data", d / "wrong.npz"]])
    d = mkdir("corrupted")
    cases["corrupted"] = (d, [["run", _copy(artifact, d / "bad.luxc", flip_executable=True)],
                              ["inspect", _copy(artifact, d / "bad-json.luxc", "{not json",
                                                flip_executable=True)]])
    d = mkdir("other")
    cases["other jaxlib"] = (d, [["run", _copy(artifact, d / "other.luxc",
                                               versions={"jaxlib": "0.0.1"}), "--steps", "2"]])
    d = mkdir("old")
    cases["format 99"] = (d, [["run", _copy(artifact, d / "old.luxc", format_version=99)]])
    for spec, _ in COMPILE_ERRORS:
        cases[f"compile {spec}"] = (workdir, [["compile", spec, "--out", "never.luxc"]])
    (workdir / "manifest-before.json").write_bytes((artifact / "manifest.json").read_bytes())
    cases["no force"] = (workdir, [["compile", "model_src.py:factory", "--out", artifact.name]])
    cases["missing"] = (workdir, [["run", "nowhere.luxc"]])
    cases["passes"] = (workdir, [["passes"]])
    cases["demo"] = (workdir, [["demo", "--steps", "60"]])
    d = mkdir("errors")
    cases["errors"] = (d, [["run", d / "nowhere"], ["compile", "no-colon", "--out", "x"]])
    return cases


@pytest.fixture(scope="module")
def runs(artifact, workdir, tmp_path_factory):
    """Every case of ``_cases`` in ONE fresh process (one jax start instead of one a command):
    case -> (its directory, its commands' results)."""
    cases = _cases(tmp_path_factory.mktemp, artifact, workdir)
    results = iter(luxc_cli_each([(d, args) for d, commands in cases.values()
                                  for args in commands]))
    return {name: (d, [next(results) for _ in commands]) for name, (d, commands) in cases.items()}


@pytest.fixture(scope="module")
def expected_losses():
    """The same training in this process, through the Python API, run eagerly (AutoJAX): an
    independent reference, without luxc's passes or compiled step. Its first 30 losses: a
    shorter run's are the first of them."""
    import luxc as lx

    namespace: dict = {}
    exec(FACTORY, namespace)
    obj, data, ts = namespace["factory"]()
    out = []
    for _ in range(30):
        _, loss, _, ts = lx.training.single_train_step_(lx.AutoJAX(), obj, data, ts)
        out.append(float(loss))
    return out


def test_compile_writes_a_complete_artifact(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert set(manifest["files"]) == {"step.jaxexport", "step.mlir", "executable.bin",
                                      "state.safetensors", "data.safetensors",
                                      "forward.jaxexport", "evaluate.jaxexport"}
    assert manifest["platforms"] == ["cpu"] and manifest["executable_platform"] == "cpu"
    assert manifest["versions"]["jax"] and manifest["layout"]["n_data"] == 2
    names = [o["name"] for o in manifest["outputs"]]
    assert names[manifest["layout"]["n_state"]] == "loss" and len(names) == manifest["layout"]["n_state"] + 1
    inputs = [i["name"] for i in manifest["inputs"]]
    assert names[0] == inputs[0] == "parameters['layer_1']['bias']"  # named by their path
    assert "optimizer_state[0].mu['layer_1']['bias']" in inputs and inputs[-2:] == ["data[0]", "data[1]"]
    assert "func.func public @main" in (artifact / "step.mlir").read_text()


def test_inspect_shows_the_manifest_and_figures(runs):
    _, (r, as_json) = runs["inspect"]
    assert r.returncode == 0, r.stderr
    assert "data[0]: float32[8, 3]" in r.stdout and "flops" in r.stdout and "peak" in r.stdout
    assert "objective   MSELoss(agg='mean')" in r.stdout  # what the factory trains with
    assert "optimizer   optax chain (states: ScaleByAdamState)" in r.stdout  # optax.adam's state
    manifest = json.loads(as_json.stdout)
    assert manifest["format"] == "luxc-artifact"
    assert manifest["inputs"][0] == {"name": "parameters['layer_1']['bias']", "shape": [16],
                                     "dtype": "float32"}


def _losses(stdout):
    return [float(line.split("loss")[1]) for line in stdout.splitlines() if line.startswith("step ")]


def test_run_with_several_steps_per_call_gives_the_same_losses(runs, expected_losses):
    _, (r,) = runs["steps per call"]
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(_losses(r.stdout), expected_losses[:7], rtol=1e-4)


def test_run_needs_no_model_source_and_matches_in_process_training(runs, expected_losses):
    d, (r,) = runs["shipped"]
    assert not (d / "model_src.py").exists()  # only the artifact was shipped
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(_losses(r.stdout), expected_losses[:4], rtol=1e-5)
    assert (d / "final.safetensors").is_file()


def test_run_prints_every_n_steps_and_a_summary(runs, expected_losses):
    d, (r,) = runs["every"]
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["10", "20", "30"]
    summary = next(line for line in lines if line.startswith("ran 30 steps (1-30) in "))
    first, last = (float(v) for v in summary.split("loss ")[1].split(" -> "))
    np.testing.assert_allclose([first, last], [expected_losses[0], expected_losses[-1]],
                               rtol=1e-4)
    assert "steps/s" in summary
    assert "executable: serialized executable" in r.stdout  # this user's own artifact
    assert (d / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_quiet_prints_only_the_summary(runs):
    _, (r,) = runs["quiet"]
    assert r.returncode == 0, r.stderr
    assert not any(line.startswith("step ") for line in r.stdout.splitlines())
    assert "ran 3 steps (1-3)" in r.stdout


def test_run_takes_data_from_an_npz(runs):
    _, (r, wrong) = runs["npz"]
    assert r.returncode == 0, r.stderr
    assert_one_line_error(wrong, "wrong.npz holds 4 samples; the step's batch is 8")


def test_a_corrupted_artifact_is_refused(runs):
    _, (run, inspect) = runs["corrupted"]
    assert_one_line_error(run, "checksum mismatch", "executable.bin")
    assert_one_line_error(inspect, "is corrupt")


def test_another_jaxlib_falls_back_to_the_portable_module(runs):
    _, (r,) = runs["other jaxlib"]
    assert r.returncode == 0, r.stderr
    assert "compiled the portable StableHLO" in r.stderr
    assert sum(line.startswith("step ") for line in r.stdout.splitlines()) == 2
    assert "executable: compiled from StableHLO" in r.stdout  # the summary says so too


def test_unknown_format_version_is_refused(runs):
    _, (r,) = runs["format 99"]
    assert_one_line_error(r, "format version 99")


@pytest.mark.parametrize("spec,message", COMPILE_ERRORS)
def test_compile_errors_are_one_line(workdir, runs, spec, message):
    _, (r,) = runs[f"compile {spec}"]
    assert_one_line_error(r, message)
    assert not (workdir / "never.luxc").exists()
    assert not list(workdir.glob(".never.luxc.*"))


def test_compile_never_overwrites_without_force(runs, artifact, workdir):
    _, (r,) = runs["no force"]
    assert_one_line_error(r, "already exists", "--force")
    assert (artifact / "manifest.json").read_bytes() == \
        (workdir / "manifest-before.json").read_bytes()


def test_missing_artifact_is_one_line(runs):
    _, (r,) = runs["missing"]
    assert_one_line_error(r, "artifact directory not found")


def test_profile_reports_times_memory_and_flops(runs):
    d, (r,) = runs["profile"]
    assert r.returncode == 0, r.stderr
    for word in ("cold", "warm (persistent cache)", "median", "min", "max", "over 5 steps",
                 "steps/s", "peak memory", "page faults", "/step", "GFLOP/s"):
        assert word in r.stdout
    assert "batch          8 (leading axis of data[0])" in r.stdout  # the factory's x is (8, 3)
    assert "passes         maxpool_grad_select (0 rewrites)" in r.stdout
    rows = [line for line in r.stdout.splitlines()
            if line.split()[0] in ("compile", "step", "throughput", "peak", "page", "achieved")]
    assert len(rows) == 6
    assert {len(line[:25].rstrip()) for line in rows} == {25}  # every number ends in one column
    assert any((d / "trace").rglob("*.xplane.pb"))


def test_profile_counts_the_pages_a_step_maps_anew():
    """The page-fault row is measured, not estimated: a "step" that writes a fresh 80 MB buffer
    (glibc maps it anew, as XLA's large temporaries) faults in each of its pages per call."""
    import ctypes
    import resource

    from luxc.cli.profile_cmd import _timed

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page, n = resource.getpagesize(), 80_000_000

    def fresh_buffer():  # malloc'd, written, freed: no caching allocator between
        p = libc.malloc(n)
        # In base pages even where transparent huge pages are "always" (one fault per 2 MiB):
        # MADV_NOHUGEPAGE (15 on Linux) on the whole pages of this block only.
        start = -(-p // page) * page
        libc.madvise(start, (p + n - start) // page * page, 15)
        ctypes.memset(p, 1, n)
        libc.free(p)

    _, faults = _timed(fresh_buffer, 5, None)
    assert faults > 0.75 * n / page
    _, faults = _timed(lambda: None, 5, None)
    assert faults < 256


def test_passes_lists_every_pass(runs):
    _, (r,) = runs["passes"]
    assert r.returncode == 0 and "fuse_rsqrt" in r.stdout and "fuse_loss_reductions" in r.stdout
    assert "default on cpu" in r.stdout


def test_demo_trains_and_reports(runs):
    _, (r,) = runs["demo"]
    assert r.returncode == 0, r.stderr
    assert "Total: 49_921 parameters" in r.stdout and "pass report" in r.stdout
    assert "compiled the whole step" in r.stdout and "µs/step" in r.stdout
    first, last = (float(v) for v in r.stdout.split("\nloss ")[1].split(" in ")[0].split(" -> "))
    assert last < first / 10


def test_a_second_process_loads_the_step_from_the_persistent_cache(tmp_path):
    script = textwrap.dedent("""
        import jax, luxc  # LUXC_CACHE_DIR turns the persistent cache on at the first compile
        hits = []
        jax.monitoring.register_event_listener(
            lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
        exec(open("model_src.py").read())
        obj, data, ts = factory()
        luxc.compile_step(obj, data, ts)
        print("HITS", len(hits))
    """)
    (tmp_path / "model_src.py").write_text(FACTORY)
    env = {"LUXC_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=300) for _ in range(2)]
    counts = [int(r.stdout.split("HITS")[-1]) for r in runs]
    assert counts[0] == 0 and counts[1] >= 1, [r.stderr[-500:] for r in runs]
    assert any((tmp_path / "cache").glob("*.luxc-xla"))


def test_errors_read_the_same_way_whatever_their_source(runs):
    d, (missing, bad_spec) = runs["errors"]
    assert missing.stderr.strip().splitlines()[-1] == \
        f"Error: artifact directory not found: {d / 'nowhere'}"
    assert bad_spec.stderr.strip().splitlines()[-1].startswith("Error: bad SPEC 'no-colon'")
