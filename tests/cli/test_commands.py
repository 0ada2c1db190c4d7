"""The luxc command, run in subprocesses as a user runs it."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.support import luxc_cli_each

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


def luxc(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "luxc.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


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
    r = luxc("compile", "model_src.py:factory", "--out", "step.luxc", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "wrote step.luxc" in r.stdout
    return workdir / "step.luxc"


def _expected_losses(n):
    """The same training in this process, through the Python API, run eagerly (AutoJAX): an
    independent reference, without luxc's passes or compiled step."""
    import luxc as lx

    namespace: dict = {}
    exec(FACTORY, namespace)
    obj, data, ts = namespace["factory"]()
    out = []
    for _ in range(n):
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


def test_inspect_shows_the_manifest_and_figures(artifact, workdir):
    r = luxc("inspect", artifact, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "data[0]: float32[8, 3]" in r.stdout and "flops" in r.stdout and "peak" in r.stdout
    assert "objective   MSELoss(agg='mean')" in r.stdout  # what the factory trains with
    assert "optimizer   optax chain (states: ScaleByAdamState)" in r.stdout  # optax.adam's state
    r = luxc("inspect", artifact, "--json", cwd=workdir)
    manifest = json.loads(r.stdout)
    assert manifest["format"] == "luxc-artifact"
    assert manifest["inputs"][0] == {"name": "parameters['layer_1']['bias']", "shape": [16],
                                     "dtype": "float32"}


def test_run_with_several_steps_per_call_gives_the_same_losses(artifact, tmp_path):
    r = luxc("run", artifact, "--steps", "7", "--steps-per-call", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    losses = [float(line.split("loss")[1]) for line in r.stdout.splitlines() if line.startswith("step ")]
    np.testing.assert_allclose(losses, _expected_losses(7), rtol=1e-4)


def test_run_needs_no_model_source_and_matches_in_process_training(artifact, tmp_path):
    copy = tmp_path / "shipped.luxc"
    subprocess.run(["cp", "-r", str(artifact), str(copy)], check=True)
    r = luxc("run", copy, "--steps", "4", "--save-state", "final.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    losses = [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("step")]
    np.testing.assert_allclose(losses, _expected_losses(4), rtol=1e-5)
    assert (tmp_path / "final.safetensors").is_file()


def test_run_prints_every_n_steps_and_a_summary(artifact, tmp_path):
    r = luxc("run", artifact, "--steps", "30", "--every", "10", "--plot", "loss.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["10", "20", "30"]
    expected = _expected_losses(30)
    summary = next(line for line in lines if line.startswith("ran 30 steps (1-30) in "))
    first, last = (float(v) for v in summary.split("loss ")[1].split(" -> "))
    np.testing.assert_allclose([first, last], [expected[0], expected[-1]], rtol=1e-4)
    assert "steps/s" in summary
    assert "executable: serialized executable" in r.stdout  # this user's own artifact
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_quiet_prints_only_the_summary(artifact, tmp_path):
    r = luxc("run", artifact, "--steps", "3", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not any(line.startswith("step ") for line in r.stdout.splitlines())
    assert "ran 3 steps (1-3)" in r.stdout


def test_run_takes_data_from_an_npz(artifact, tmp_path):
    x = np.zeros((8, 3), np.float32)
    np.savez(tmp_path / "zeros.npz", x, np.zeros((8, 1), np.float32))
    r = luxc("run", artifact, "--steps", "1", "--data", tmp_path / "zeros.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    np.savez(tmp_path / "wrong.npz", np.zeros((4, 3), np.float32), np.zeros((4, 1), np.float32))
    r = luxc("run", artifact, "--steps", "1", "--data", tmp_path / "wrong.npz", cwd=tmp_path)
    assert_one_line_error(r, "wrong.npz holds 4 samples; the step's batch is 8")


def test_a_corrupted_artifact_is_refused(artifact, tmp_path):
    bad = tmp_path / "bad.luxc"
    subprocess.run(["cp", "-r", str(artifact), str(bad)], check=True)
    blob = bytearray((bad / "executable.bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bad / "executable.bin").write_bytes(bytes(blob))
    assert_one_line_error(luxc("run", bad, cwd=tmp_path), "checksum mismatch", "executable.bin")
    (bad / "manifest.json").write_text("{not json")
    assert_one_line_error(luxc("inspect", bad, cwd=tmp_path), "is corrupt")


def test_another_jaxlib_falls_back_to_the_portable_module(artifact, tmp_path):
    other = tmp_path / "other.luxc"
    subprocess.run(["cp", "-r", str(artifact), str(other)], check=True)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["versions"]["jaxlib"] = "0.0.1"
    (other / "manifest.json").write_text(json.dumps(manifest))
    r = luxc("run", other, "--steps", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "compiled the portable StableHLO" in r.stderr
    assert sum(line.startswith("step ") for line in r.stdout.splitlines()) == 2
    assert "executable: compiled from StableHLO" in r.stdout  # the summary says so too


def test_unknown_format_version_is_refused(artifact, tmp_path):
    old = tmp_path / "old.luxc"
    subprocess.run(["cp", "-r", str(artifact), str(old)], check=True)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 99
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(luxc("run", old, cwd=tmp_path), "format version 99")


COMPILE_ERRORS = [
    ("missing.py:factory", "SPEC file not found: missing.py"),
    ("model_src.py", "bad SPEC"),
    ("model_src.py:nothing", "has no callable 'nothing'"),
    ("model_src.py:broken", "factory model_src.py:broken raised ValueError: no data today"),
    ("no_such_module:factory", "cannot import module 'no_such_module'"),
    ("model_src.py:bad_objective", "must return a scalar loss"),
]

@pytest.fixture(scope="module")
def compile_errors(workdir):
    """Every bad SPEC compiled, all in one fresh process."""
    runs = luxc_cli_each([(workdir, ["compile", spec, "--out", "never.luxc"])
                          for spec, _ in COMPILE_ERRORS])
    return {spec: r for (spec, _), r in zip(COMPILE_ERRORS, runs)}


@pytest.mark.parametrize("spec,message", COMPILE_ERRORS)
def test_compile_errors_are_one_line(workdir, compile_errors, spec, message):
    assert_one_line_error(compile_errors[spec], message)
    assert not (workdir / "never.luxc").exists()
    assert not list(workdir.glob(".never.luxc.*"))


def test_compile_never_overwrites_without_force(artifact, workdir):
    before = (artifact / "manifest.json").read_bytes()
    r = luxc("compile", "model_src.py:factory", "--out", artifact.name, cwd=workdir)
    assert_one_line_error(r, "already exists", "--force")
    assert (artifact / "manifest.json").read_bytes() == before


def test_missing_artifact_is_one_line(workdir):
    assert_one_line_error(luxc("run", "nowhere.luxc", cwd=workdir), "artifact directory not found")


def test_profile_reports_times_memory_and_flops(workdir, tmp_path):
    r = luxc("profile", "model_src.py:factory", "--steps", "5", "--trace", tmp_path / "trace",
             cwd=workdir)
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
    assert any((tmp_path / "trace").rglob("*.xplane.pb"))


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


def test_passes_lists_every_pass(workdir):
    r = luxc("passes", cwd=workdir)
    assert r.returncode == 0 and "fuse_rsqrt" in r.stdout and "fuse_loss_reductions" in r.stdout
    assert "default on cpu" in r.stdout


def test_demo_trains_and_reports(workdir):
    r = luxc("demo", "--steps", "60", cwd=workdir)
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


def test_errors_read_the_same_way_whatever_their_source(tmp_path):
    missing = luxc("run", tmp_path / "nowhere", cwd=tmp_path).stderr.strip().splitlines()[-1]
    assert missing == f"Error: artifact directory not found: {tmp_path / 'nowhere'}"
    bad_spec = luxc("compile", "no-colon", "--out", "x", cwd=tmp_path).stderr.strip().splitlines()[-1]
    assert bad_spec.startswith("Error: bad SPEC 'no-colon'")
