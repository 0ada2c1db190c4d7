"""Adversarial tests: a file someone else wrote is data, never code, and nothing a user owns is
lost. Each test is one attack on an artifact, a checkpoint, the persistent cache or a command's
output path (README, "Trust")."""

import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

import luxc
from luxc.runtime.artifacts import _format as artifact_format
from luxc.runtime.artifacts import _tensor_codec as tensor_codec
from luxc.runtime.caching import persistent_cache
from luxc.runtime.files import _bounded_read as bounded_read
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.trust import _user_key as trust
from tests.support import luxc_cli_each
from tests.trust._artifacts import (
    exported_with_custom_call,
    mlp_state,
    read_manifest,
    replace_file,
    step_data,
    unsigned,
    write_manifest,
)

# ---------------------------------------------------------------- helpers


def _payload(marker):
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(RunsCode())


def _load(d):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = luxc.load(d)
    return loaded, [str(w.message) for w in caught]


# ---------------------------------------------------------------- artifacts: code execution


def test_our_own_signed_artifact_loads_its_serialized_executable(art, mlp_losses):
    loaded, notes = _load(art)
    assert loaded.executable_source == "serialized executable" and notes == []
    np.testing.assert_allclose(loaded.run(3), mlp_losses, rtol=1e-5)


def test_a_pickle_payload_with_recomputed_hashes_never_runs(art, tmp_path, mlp_losses):
    marker = tmp_path / "payload-ran"
    replace_file(art, "executable.bin", _payload(marker))
    loaded, notes = _load(art)
    assert not marker.exists()
    assert loaded.executable_source == "compiled from StableHLO"
    assert any("signature is not this user's" in n for n in notes), notes
    np.testing.assert_allclose(loaded.run(3), mlp_losses, rtol=1e-5)


def test_a_pickle_payload_is_not_unpickled_even_when_the_manifest_is_signed(art, tmp_path,
                                                                            mlp_losses):
    # The worst case: the attacker can sign (e.g. the user was tricked into re-signing). The
    # executable bytes go to XLA's deserializer, never to pickle, so the payload still cannot run.
    marker = tmp_path / "payload-ran"
    replace_file(art, "executable.bin", _payload(marker))
    manifest = (art / "manifest.json").read_bytes()
    (art / "manifest.sig").write_text(trust.sign(artifact_format.SIGNATURE_DOMAIN, manifest))
    loaded, notes = _load(art)
    assert not marker.exists()
    assert loaded.executable_source == "compiled from StableHLO"
    np.testing.assert_allclose(loaded.run(3), mlp_losses, rtol=1e-5)


def test_xla_options_of_an_unsigned_artifact_cannot_write_files_or_abort(art, tmp_path,
                                                                        mlp_losses):
    dump = tmp_path / "dumped-here"
    m = read_manifest(art)
    m["compile_options"]["xla_options"] = {"xla_dump_to": str(dump), "xla_no_such_flag": True,
                                           "xla_cpu_enable_fast_math": False}
    write_manifest(art, m)
    loaded, notes = _load(art)
    assert not dump.exists()
    assert any("ignored the XLA options xla_dump_to, xla_no_such_flag" in n for n in notes), notes
    np.testing.assert_allclose(loaded.run(3), mlp_losses, rtol=1e-5)


def test_an_artifact_signed_with_another_users_key_compiles_its_stablehlo(art, tmp_path, monkeypatch):
    monkeypatch.setenv("LUXC_KEY_FILE", str(tmp_path / "someone-else" / "key"))
    loaded, notes = _load(art)
    assert loaded.executable_source == "compiled from StableHLO"
    assert any("did not load the artifact's executable (native code)" in n for n in notes)


def test_a_key_file_others_can_read_is_not_used(art, tmp_path, monkeypatch):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    monkeypatch.setenv("LUXC_KEY_FILE", str(key))
    assert "readable or writable by others" in trust.key_problem()
    loaded, notes = _load(art)
    assert loaded.executable_source == "compiled from StableHLO"
    assert any("chmod 600" in n for n in notes), notes


def test_a_symlinked_key_file_is_refused(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.write_bytes(os.urandom(32))
    real.chmod(0o600)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("LUXC_KEY_FILE", str(tmp_path / "link"))
    assert "symbolic link" in trust.key_problem()


def test_the_key_is_created_private_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("LUXC_KEY_FILE", str(tmp_path / "new" / "key"))
    tag = trust.sign("test", b"abc")
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
    assert trust.verify(tag, "test", b"abc") and not trust.verify(tag, "other", b"abc")


# ---------------------------------------------------------------- artifacts: what is read


def test_each_file_is_read_once_and_the_checked_bytes_are_used(art, monkeypatch):
    reads = []
    original = bounded_read.read_regular

    def counting(path, what, max_bytes):
        reads.append(os.path.basename(path))
        return original(path, what, max_bytes)

    monkeypatch.setattr(artifact_format, "read_regular", counting)
    _load(art)
    assert sorted(reads) == sorted(["manifest.json", "manifest.sig", "step.jaxexport", "step.mlir",
                                    "state.safetensors", "data.safetensors", "executable.bin",
                                    "forward.jaxexport", "evaluate.jaxexport"])


def test_a_state_file_dropped_from_the_manifest_is_an_error_not_silently_read(art):
    np.save(art / "sevens.npy", np.full(3, 7.0))
    m = read_manifest(art)
    del m["files"]["state.safetensors"]
    write_manifest(art, m)
    with pytest.raises(ArtifactError, match="does not list state.safetensors"):
        luxc.load(art)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", "sub/step.mlir", "notes.txt"])
def test_manifest_names_outside_the_format_are_refused_without_being_read(art, monkeypatch, name):
    reads = []
    monkeypatch.setattr(artifact_format, "read_regular",
                        lambda path, *a: reads.append(str(path)) or bounded_read.read_regular(path, *a))
    m = read_manifest(art)
    m["files"][name] = {"sha256": "0" * 64, "size": 1}
    write_manifest(art, m)
    with pytest.raises(ArtifactError, match="not a file of the luxc artifact format"):
        luxc.load(art)
    assert all(os.path.dirname(p) == str(art) for p in reads)
    assert not any(name.split("/")[-1] in p for p in reads if "manifest" not in p)


def test_a_symlinked_file_is_refused_even_with_the_right_bytes(art, tmp_path):
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(art / "state.safetensors", elsewhere)
    (art / "state.safetensors").symlink_to(elsewhere)
    with pytest.raises(ArtifactError, match="symbolic link"):
        luxc.load(art)


def test_a_file_larger_than_the_manifest_says_is_not_read_past_its_size(art):
    with open(art / "step.mlir", "ab") as f:
        f.write(b"x" * (1 << 20))
    with pytest.raises(ArtifactError, match="more than the .* expected"):
        luxc.load(art)


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(art):
    (art / "data.safetensors").unlink()
    os.mkfifo(art / "data.safetensors")
    with pytest.raises(ArtifactError, match="not a regular file"):
        luxc.load(art)


def test_an_endless_file_claimed_huge_in_the_manifest_is_refused(art):
    m = read_manifest(art)
    m["files"]["step.mlir"]["size"] = 1 << 29  # within the module bound: the link is what is refused
    write_manifest(art, m)
    (art / "step.mlir").unlink()
    (art / "step.mlir").symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="symbolic link"):
        luxc.load(art)


def _move_a_state_array_into_the_data(m):
    layout = m["layout"]
    layout["n_state"] -= 1
    layout["n_data"] += 1
    layout["data_names"].insert(0, layout["state_names"].pop())


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["layout"].update(step=-5), "layout.step is -5; a step count is never negative"),
    (lambda m: m["layout"].update(n_stats=3, stat_names=["a", "b", "c"]),
     "layout.n_stats is 3, but the step has 0 outputs"),
    (lambda m: m["layout"].update(n_stats=3), "layout.stat_names names 0 stats but layout.n_stats is 3"),
    (lambda m: m["layout"].update(n_data=0, data_names=[], n_state=len(m["inputs"])),
     "layout.data_names is empty: the step takes no data"),
    (_move_a_state_array_into_the_data, "a state array was moved into the data"),
    (lambda m: m.pop("layout"), "manifest field layout is missing"),
    (lambda m: m.update(platforms="cpu"), "manifest field platforms must be a list"),
    (lambda m: m["layout"].update(step="3"), "manifest field layout.step must be int"),
    (lambda m: m["inputs"][0].update(dtype="object"), "dtype"),
    (lambda m: m["files"]["step.mlir"].update(size=-1), "malformed"),
    (lambda m: m.update(executable_key=None), "executable without its key"),
])
def test_a_malformed_manifest_is_one_artifact_error(art, edit, message):
    m = read_manifest(art)
    edit(m)
    write_manifest(art, m)
    with pytest.raises(ArtifactError, match=message):
        luxc.load(art)


@pytest.mark.filterwarnings("ignore:did not load the artifact's executable")
def test_state_tensors_that_disagree_with_the_manifest_are_refused(art):
    state = tensor_codec.tensor_bytes([np.full((8, 3), 7.0, np.float32)])
    replace_file(art, "state.safetensors", state)
    with pytest.raises(ArtifactError, match="holds 1 arrays; the manifest lists"):
        luxc.load(art)


# ---------------------------------------------------------------- commands: nothing is lost


FACTORY = textwrap.dedent("""
    import jax, jax.numpy as jnp, optax, luxc
    def factory():
        model = luxc.nn.Dense(3, 1)
        ps, st = luxc.setup(jax.random.key(0), model)
        x = jnp.ones((8, 3))
        return luxc.MSELoss(), (x, x[:, :1]), luxc.TrainState(model, ps, st, optax.sgd(0.1))
""")


def _with_factory(d, source=FACTORY):
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.py").write_text(source)
    return d


def _command_cases(mkdir, template):
    """Each case: (its directory, its commands as ``(cwd, args)``, run in order)."""
    cases = {}
    d = mkdir("not-an-artifact")
    project = _with_factory(d / "project")
    cases["not an artifact"] = (d, [(project, ["compile", "model.py:factory", "--out", ".",
                                               "--force"]),
                                    (d, ["compile", "project/model.py:factory", "--out",
                                         "project", "--force"])])
    d = _with_factory(mkdir("fake-manifest"))
    (d / "proj" / "src").mkdir(parents=True)
    (d / "proj" / "manifest.json").write_text('{"format": "luxc-artifact"}')
    (d / "proj" / "thesis.tex").write_text("thesis")
    cases["fake manifest"] = (d, [(d, ["compile", "model.py:factory", "--out", d / "proj",
                                       "--force"])])
    d = _with_factory(mkdir("replace"))
    shutil.copytree(template, d / "art")
    cases["replace"] = (d, [(d, ["compile", "model.py:factory", "--out", d / "art", "--force"])])
    d = mkdir("unwritable")
    _with_factory(d, FACTORY + f"\nopen({str(d / 'factory-ran')!r}, 'w')\n")
    (d / "file").write_text("x")
    cases["unwritable out"] = (d, [(d, ["compile", "model.py:factory", "--out", "file/sub"])])
    d = mkdir("save-state")
    art = shutil.copytree(template, d / "art")
    cases["save state"] = (d, [(d, ["run", art, "--steps", "3", "--save-state", bad])
                               for bad in (d / "no-such-dir" / "state.safetensors", d)])
    d = mkdir("trace")
    (d / "file").write_text("x")
    art = shutil.copytree(template, d / "art")
    cases["trace"] = (d, [(d, ["profile", art, "--trace", d / "file" / "trace"])])
    d = _with_factory(mkdir("parent"))
    cases["missing parent"] = (d, [(d, ["compile", "model.py:factory", "--out", "nd/sub/art"])])
    return cases


@pytest.fixture(scope="module")
def commands(template, tmp_path_factory):
    """Every case of ``_command_cases`` in ONE fresh process (one jax start instead of one a
    command): case -> (its directory, its commands' results)."""
    cases = _command_cases(tmp_path_factory.mktemp, template)
    results = iter(luxc_cli_each([run for _, runs in cases.values() for run in runs]))
    return {name: (d, [next(results) for _ in runs]) for name, (d, runs) in cases.items()}


def test_compile_force_refuses_a_directory_that_is_not_an_artifact(commands):
    d, (dot, project) = commands["not an artifact"]
    assert dot.returncode == 1 and "names no new directory" in dot.stderr.strip().splitlines()[-1]
    assert project.returncode == 1 and "is not a luxc artifact" in project.stderr
    assert (d / "project" / "model.py").read_text() == FACTORY


def test_compile_force_refuses_a_fake_manifest_beside_the_users_files(commands):
    d, (r,) = commands["fake manifest"]
    assert r.returncode == 1 and "it also holds src, thesis.tex" in r.stderr, r.stderr
    assert (d / "proj" / "thesis.tex").read_text() == "thesis" and (d / "proj" / "src").is_dir()


def test_compile_force_replaces_an_artifact_in_one_step(commands, template):
    d, (r,) = commands["replace"]
    assert r.returncode == 0, r.stderr
    before, after = read_manifest(template), read_manifest(d / "art")  # art was a copy
    # 5 inputs: the parameters, the optimiser state with its adjustable learning rate, the data
    assert after["layout"]["model"] != before["layout"]["model"] and len(after["inputs"]) == 5
    assert not [p for p in d.iterdir() if ".luxc-" in p.name]  # no leftovers


def test_compile_refuses_an_unwritable_out_before_running_the_factory(commands):
    d, (r,) = commands["unwritable out"]
    assert r.returncode == 1 and not (d / "factory-ran").exists(), r.stderr


def test_run_checks_save_state_before_training(commands):
    _, runs = commands["save state"]
    for r in runs:
        assert r.returncode != 0 and "--save-state" in r.stderr
        assert "loss" not in r.stdout  # refused before the first step


def test_profile_checks_trace_before_compiling(commands):
    _, (r,) = commands["trace"]
    assert r.returncode == 1 and "--trace" in r.stderr and "step time" not in r.stdout


def test_compile_creates_a_missing_parent_of_out(commands):
    d, (r,) = commands["missing parent"]
    assert r.returncode == 0, r.stderr
    assert (d / "nd/sub/art/manifest.json").exists()


# ---------------------------------------------------------------- checkpoints


def _rewrite_checkpoint(path, edit):
    arrays, meta = tensor_codec.tensors_from_bytes(path.read_bytes(), "checkpoint")
    edit(meta)
    path.write_bytes(tensor_codec.tensor_bytes(arrays, meta))


def test_an_edited_checkpoint_step_is_caught_by_the_checksum(tmp_path):
    ts, path = mlp_state(), tmp_path / "ckpt.safetensors"
    luxc.save_state(path, ts)

    def edit(meta):
        meta["contents"] = meta["contents"].replace('"step": 0', '"step": 9')

    _rewrite_checkpoint(path, edit)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        luxc.load_state(path, like=ts)


def test_a_negative_step_with_a_recomputed_checksum_is_refused(tmp_path):
    from luxc.checkpoint import _digest

    ts, path = mlp_state(), tmp_path / "ckpt.safetensors"
    luxc.save_state(path, ts)
    arrays, meta = tensor_codec.tensors_from_bytes(path.read_bytes(), "checkpoint")
    meta["contents"] = meta["contents"].replace('"step": 0', '"step": -5')
    meta["sha256"] = _digest(meta["contents"].encode(), arrays)
    path.write_bytes(tensor_codec.tensor_bytes(arrays, meta))
    with pytest.raises(ArtifactError, match="step -5; a step is a whole number from 0 to 2\\*\\*40"):
        luxc.load_state(path, like=ts)


def test_the_next_save_removes_only_the_temporaries_of_dead_writers(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ckpt.safetensors.luxc-{dead.pid}-0123456789ab.tmp"
    live = tmp_path / f".ckpt.safetensors.luxc-{os.getppid()}-0123456789ab.tmp"
    foreign = [tmp_path / ".ckpt.safetensors.tmp", tmp_path / f".other.luxc-{dead.pid}-0123456789ab.tmp"]
    for p in [stale, live, *foreign]:
        p.write_bytes(b"x" * 1000)
    luxc.save_state(path, mlp_state())
    assert not stale.exists()
    assert live.exists() and all(p.exists() for p in foreign)


def test_a_compile_removes_what_a_killed_compile_of_the_same_out_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".new.luxc.luxc-{dead.pid}-0123456789ab.partial"
    live = tmp_path / f".new.luxc.luxc-{os.getppid()}-0123456789ab.partial"
    for d in (stale, live):
        d.mkdir()
        (d / "step.mlir").write_text("partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        luxc.export_step(luxc.MSELoss(), step_data(), mlp_state(), tmp_path / "new.luxc")
    assert not stale.exists() and live.exists() and (tmp_path / "new.luxc" / "manifest.json").exists()


@pytest.mark.slow
def test_a_save_killed_mid_write_never_leaves_a_checkpoint_that_loads_wrong(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    script = textwrap.dedent(f"""
        import jax, optax, luxc
        model = luxc.nn.Dense(1024, 2048)
        ps, st = luxc.setup(jax.random.key(0), model)
        ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
        print("ready", flush=True)
        while True:
            luxc.save_state({str(path)!r}, ts)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    import time

    deadline = time.time() + 60
    while not list(tmp_path.glob(".ckpt.safetensors.luxc-*.tmp")) and time.time() < deadline:
        time.sleep(0.005)
    child.kill()
    child.wait()
    model = luxc.nn.Dense(1024, 2048)
    ps, st = luxc.setup(jax.random.key(0), model)
    like = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    if path.exists():  # an earlier complete save: it loads and equals what was saved
        loaded = luxc.load_state(path, like=like)
        np.testing.assert_array_equal(loaded.parameters["weight"], ps["weight"])
    luxc.save_state(path, like)
    assert not list(tmp_path.glob(".ckpt.safetensors.luxc-*.tmp"))


# ---------------------------------------------------------------- the persistent cache


@pytest.fixture
def cache_dir(tmp_path):
    d = tmp_path / "cache"
    with persistent_cache.using(d):
        yield d


def _compile_and_loss(objective):
    jax.clear_caches()  # forget in-memory executables: the next compile asks the disk cache
    ts = mlp_state()
    _, loss, _, _ = luxc.compile_step(objective, step_data(), ts)(ts, step_data())
    return float(loss)


def test_a_foreign_entry_copied_under_this_steps_key_is_not_run(cache_dir):
    mse = _compile_and_loss(luxc.MSELoss())
    (mse_entry,) = list(cache_dir.glob("*.luxc-xla"))
    mae = _compile_and_loss(luxc.MAELoss())
    (mae_entry,) = [p for p in cache_dir.glob("*.luxc-xla") if p != mse_entry]
    shutil.copy(mae_entry, mse_entry)  # another program's executable under the MSE step's key
    cache = persistent_cache.active()
    rejected = cache.rejected
    assert _compile_and_loss(luxc.MSELoss()) == pytest.approx(mse) != pytest.approx(mae)
    assert cache.rejected == rejected + 1


def test_an_entry_this_user_did_not_sign_is_compiled_afresh(cache_dir):
    _compile_and_loss(luxc.MSELoss())
    (entry,) = list(cache_dir.glob("*.luxc-xla"))
    data = entry.read_bytes()
    entry.write_bytes(b"0" * 64 + data[64:])
    cache = persistent_cache.active()
    hits = cache.hits
    _compile_and_loss(luxc.MSELoss())
    assert cache.hits == hits and cache.rejected >= 1
    _compile_and_loss(luxc.MSELoss())  # the fresh compile was stored, signed: now it loads
    assert cache.hits == hits + 1


def test_a_cache_directory_others_can_write_is_not_loaded_from(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    with persistent_cache.using(d), pytest.warns(persistent_cache.PersistentCacheWarning,
                                                match="can be written by other users"):
        _compile_and_loss(luxc.MSELoss())
    assert not list(d.glob("*.luxc-xla"))


def test_the_cache_directory_is_private(cache_dir):
    _compile_and_loss(luxc.MSELoss())
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in cache_dir.glob("*.luxc-xla"))


def test_luxc_leaves_the_users_jax_cache_configuration_alone(tmp_path):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users-own"))
    try:
        with persistent_cache.using(tmp_path / "luxc"):
            _compile_and_loss(luxc.MSELoss())
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "users-own")
    finally:
        # jax keeps the cache it opened for "users-own" after the option is unset: without the
        # reset, every later compile in this process wrote there (other tests' warnings).
        jax.config.update("jax_compilation_cache_dir", None)
        jax_compilation_cache.reset_cache()


def test_import_changes_no_jax_option_and_a_bad_cache_dir_is_one_warning(tmp_path):
    (tmp_path / "a-file").write_text("x")
    code = textwrap.dedent("""
        import warnings, jax
        before = (jax.config.jax_compilation_cache_dir,
                  jax.config.jax_persistent_cache_min_compile_time_secs)
        import luxc
        assert (jax.config.jax_compilation_cache_dir,
                jax.config.jax_persistent_cache_min_compile_time_secs) == before
        model = luxc.nn.Dense(2, 1)
        ps, st = luxc.setup(jax.random.key(0), model)
        ts = luxc.TrainState(model, ps, st, __import__("optax").sgd(0.1))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            luxc.compile_step(luxc.MSELoss(), (jax.numpy.ones((2, 2)), jax.numpy.ones((2, 1))), ts)
        print("WARN", [str(x.message) for x in w])
        assert jax.config.jax_compilation_cache_dir == before[0]
    """)
    env = {**os.environ, "LUXC_CACHE_DIR": str(tmp_path / "a-file" / "cache")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "LUXC_CACHE_DIR" in r.stdout and "compiling without a persistent cache" in r.stdout
    r = subprocess.run([sys.executable, "-m", "luxc.cli", "passes"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_nothing_reads_or_changes_the_process_umask(art, tmp_path, monkeypatch):
    def forbidden(*_):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)
    luxc.save_state(tmp_path / "ckpt.safetensors", mlp_state())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        luxc.export_step(luxc.MSELoss(), step_data(), mlp_state(), tmp_path / "new.luxc")


# ---------------------------------------------------------------- found by attacking the above


def test_an_unsigned_module_calling_native_functions_by_name_is_refused(art):
    from luxc.runtime.trust._module_check import check_untrusted

    with pytest.raises(ArtifactError, match="calls native functions xla_ffi_python_cpu_callback"):
        check_untrusted(exported_with_custom_call("xla_ffi_python_cpu_callback"), "art")
    replace_file(art, "step.jaxexport", exported_with_custom_call("my_native_kernel"))
    with pytest.raises(ArtifactError, match="calls native functions my_native_kernel by name"):
        luxc.load(art)


def test_an_unsigned_module_that_breaks_the_parser_fails_in_a_child_process_not_here():
    from luxc.runtime.trust._module_check import check_untrusted

    with pytest.raises(ArtifactError, match="made the checking process fail"):
        check_untrusted(b"\x00garbage that is no jax.export artifact", "art")


def test_an_unsigned_artifacts_modules_are_checked_in_one_process_that_names_a_bad_one(
        art, monkeypatch):
    # One checking process imports jax once for the step, the forward pass and the evaluation
    # (three took `luxc run` 7.4 s, one 4.3 s); what it refuses still names its file.
    import luxc.runtime.trust._module_check as module_check

    children, real_popen = [], module_check.subprocess.Popen
    monkeypatch.setattr(module_check.subprocess, "Popen",
                        lambda argv, **kw: children.append(json.loads(argv[-1])) or real_popen(argv, **kw))
    modules = sorted(f.name for f in art.glob("*.jaxexport"))
    assert modules == ["evaluate.jaxexport", "forward.jaxexport", "step.jaxexport"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        luxc.load(unsigned(art)).run(1)
    sizes = sorted((art / f).stat().st_size for f in modules)
    assert [sorted(c) for c in children] == [sizes]
    replace_file(art, "evaluate.jaxexport", exported_with_custom_call("my_native_kernel"))
    with pytest.raises(ArtifactError, match=re.escape(
            f"{art} (evaluate.jaxexport): its StableHLO calls native functions my_native_kernel")):
        luxc.load(art)
    replace_file(art, "forward.jaxexport", b"\x00garbage that is no jax.export artifact")
    with pytest.raises(ArtifactError, match=re.escape(
            f"{art} (forward.jaxexport): its StableHLO made the checking process fail")):
        luxc.load(art)


def test_xla_options_of_a_signed_artifact_are_the_users_own_choice(art):
    loaded, notes = _load(art)  # signed: its options (none here) apply, nothing is dropped
    assert not any("ignored the XLA options" in n for n in notes)


def test_a_temporary_with_an_impossible_pid_does_not_break_a_save(tmp_path):
    odd = tmp_path / f".ckpt.safetensors.luxc-{10**20}-0123456789ab.tmp"
    odd.write_bytes(b"x")
    luxc.save_state(tmp_path / "ckpt.safetensors", mlp_state())
    assert (tmp_path / "ckpt.safetensors").exists() and not odd.exists()


# Four processes forked from one that imported luxc (one import, not four), each waiting for
# the same byte: they ask for the key at the same moment. Each prints the key it got.
KEY_RACE = textwrap.dedent("""
    import os, sys, traceback
    from luxc.runtime.trust._user_key import user_key
    go, start = os.pipe()
    for _ in range(4):
        if os.fork() == 0:
            try:
                os.read(go, 1)
                os.write(1, (user_key().hex() + "\\n").encode())  # one write: lines never interleave
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(0)
    os.write(start, b"go" * 2)
    print("EXIT", *sorted(os.waitstatus_to_exitcode(os.wait()[1]) for _ in range(4)), flush=True)
""")


def test_processes_creating_the_key_at_once_all_get_the_whole_same_key(tmp_path):
    env = {**os.environ, "LUXC_KEY_FILE": str(tmp_path / "fresh" / "key")}
    r = subprocess.run([sys.executable, "-c", KEY_RACE], capture_output=True, text=True, env=env,
                       timeout=300)
    *keys, exits = r.stdout.splitlines()
    assert exits == "EXIT 0 0 0 0" and len(keys) == 4, r.stdout + r.stderr
    assert len(set(keys)) == 1 and len(keys[0]) == 64, r.stdout + r.stderr


def test_reading_an_artifact_never_creates_a_key(art, tmp_path, monkeypatch):
    monkeypatch.setenv("LUXC_KEY_FILE", str(tmp_path / "none-yet" / "key"))
    artifact = artifact_format.read_artifact(art)
    assert not artifact.signed_by_this_user and not (tmp_path / "none-yet").exists()


def test_bfloat16_checkpoints_round_trip(tmp_path):
    ts = mlp_state()
    ts = ts.replace(parameters=luxc.bf16(ts.parameters))
    ts = luxc.TrainState(ts.model, ts.parameters, ts.states, optax.sgd(0.1))
    luxc.save_state(tmp_path / "bf16.safetensors", ts)
    back = luxc.load_state(tmp_path / "bf16.safetensors", like=ts)
    for a, b in zip(jax.tree.leaves(ts.parameters), jax.tree.leaves(back.parameters)):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("manifest", ['{"format": "luxc-artifact", "format_version": 2, "x": ' + "9" * 5000 + "}",
                                      '{"a": ' + "[" * 100000 + "]" * 100000 + "}"])
def test_hostile_json_is_one_artifact_error(art, manifest):
    (art / "manifest.json").write_text(manifest)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        luxc.load(art)


def test_a_checkpoint_leaf_without_a_name_is_one_artifact_error(tmp_path):
    from luxc.checkpoint import _digest

    ts, path = mlp_state(), tmp_path / "ckpt.safetensors"
    luxc.save_state(path, ts)
    arrays, meta = tensor_codec.tensors_from_bytes(path.read_bytes(), "checkpoint")
    contents = json.loads(meta["contents"])
    contents["leaves"][0]["path"] = None
    meta["contents"] = json.dumps(contents)
    meta["sha256"] = _digest(meta["contents"].encode(), arrays)
    path.write_bytes(tensor_codec.tensor_bytes(arrays, meta))
    with pytest.raises(ArtifactError, match="does not describe its tensors"):
        luxc.load_state(path, like=ts)


def test_overlapping_tensors_in_a_safetensors_header_are_refused():
    import struct

    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    data = struct.pack("<Q", len(header)) + header + b"\0" * 12
    with pytest.raises(ArtifactError, match="share bytes"):
        tensor_codec.tensors_from_bytes(data, "state")


def test_a_deleted_cache_directory_is_recreated_private(cache_dir):
    _compile_and_loss(luxc.MSELoss())
    shutil.rmtree(cache_dir)
    _compile_and_loss(luxc.MAELoss())
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
