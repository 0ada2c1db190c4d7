"""``CompileOptions(autotune=True)``: the candidates, the chooser (with an injected timer, since
timing a shared machine is noise), the tuned step's numbers, the cache, the records."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxc
from luxc.runtime.compiling import _autotune as autotune
from luxc.runtime.compiling._autotune import Candidate, candidates, choose, tune
from tests.runtime._random import normal
from tests.support import luxc_cli_each

FACTORY = """
import jax, jax.numpy as jnp, optax, luxc
from luxc import nn

def factory():
    model = nn.Chain(nn.Dense(3, 16, jax.nn.relu), nn.Dense(16, 1))
    ps, st = luxc.setup(jax.random.key(0), model)
    x = jnp.linspace(-1, 1, 24).reshape(8, 3)
    return luxc.MSELoss(), (x, jnp.sum(x, axis=1, keepdims=True)), luxc.TrainState(
        model, ps, st, optax.sgd(1e-2, momentum=0.9))
"""


def _problem():
    # SGD with momentum: an optimiser state to donate, and each candidate compiles in 3/4 of
    # Adam's time.
    model = luxc.nn.Chain(luxc.nn.Dense(4, 32, jax.nn.tanh), luxc.nn.LayerNorm(32),
                          luxc.nn.Dense(32, 2))
    ps, st = luxc.setup(jax.random.key(0), model)
    x = normal(1, (16, 4))
    return luxc.TrainState(model, ps, st, optax.sgd(1e-2, momentum=0.9)), (x, jnp.sin(x[:, :2]))


def _prefer(name):
    """A timer under which candidate ``name`` is the fastest (the others 1 s a step)."""
    return lambda calls, args, **how: {n: 0.0 if n == name else 1.0 for n in calls}


def _time_briefly(monkeypatch, seen=None):
    """Tune with the real timer, cut to one warm-up sample and one round (the tests check what
    tuning does with the steps and buffers, not how well it times them); with ``seen``, record
    the candidates of each timing."""
    real = autotune.interleaved_seconds

    def brief(calls, args, **how):
        if seen is not None:
            seen.append(list(calls))
        return real(calls, args, warmup=1, budget=0.0, rounds=(1, 1), **how)

    monkeypatch.setattr(autotune, "interleaved_seconds", brief)


@pytest.fixture(scope="module")
def untuned():
    """Five steps of ``_problem()`` compiled without tuning, from the same start as every test's:
    each step's loss and the parameters after it."""
    ts, data = _problem()
    losses, parameters = [], []
    for _ in range(5):
        _, loss, _, ts = luxc.training.single_train_step(luxc.AutoXLA(), luxc.MSELoss(), data, ts)
        losses.append(float(loss))
        parameters.append(ts.parameters)
    return losses, parameters


def test_choose_keeps_the_least_median_and_gives_a_tie_to_the_earlier():
    tried = candidates("cpu", luxc.CompileOptions())
    assert choose(tried, {"default": 3.0, "passes=none": 1.0, "no YNN fusions": 2.0,
                          "no fusion emitters": 1.5}).chosen == "passes=none"
    assert choose(tried, dict.fromkeys([c.name for c in tried], 1.0)).chosen == "default"


def test_the_default_is_left_only_for_a_candidate_more_than_the_margin_faster():
    tried = candidates("cpu", luxc.CompileOptions())
    near = {"default": 1.0, "passes=none": 0.98, "no YNN fusions": 1.1, "no fusion emitters": 1.2}
    assert choose(tried, near).chosen == "default"  # 2% faster: within a tuning run's noise
    assert choose(tried, {**near, "passes=none": 0.96}).chosen == "passes=none"
    assert choose(tried, near, margin=0.0).chosen == "passes=none"


def test_the_timer_compares_candidates_within_each_round(monkeypatch):
    """A machine that slows down call by call (load arriving) moves both candidates alike: the
    per-round ratio still finds the one twice as fast, and its figure is the default's median
    time times that ratio."""
    clock = {"t": 0.0, "slowdown": 1e-3}

    def call(cost):
        def run(*args):
            clock["t"] += cost * clock["slowdown"]
            clock["slowdown"] *= 1.05
            return args
        return run

    monkeypatch.setattr(autotune.time, "perf_counter", lambda: clock["t"])
    seconds = autotune.interleaved_seconds({"default": call(2.0), "faster": call(1.0)},
                                           [jnp.zeros(2)], warmup=1, budget=0.0, rounds=(10, 10))
    assert seconds["faster"] / seconds["default"] == pytest.approx(0.5, rel=0.06)


def test_a_chained_sample_is_a_loop_of_calls_on_what_the_last_one_returned(monkeypatch):
    """With ``chain`` a sample is a loop: each call gets what the one before returned, from a
    fresh copy of the arguments each sample, and the figure is the sample's time per call."""
    clock, seen = {"t": 0.0}, []

    def step(count, data):
        clock["t"] += 1e-5
        seen.append(int(count))
        return count + 1, data

    monkeypatch.setattr(autotune.time, "perf_counter", lambda: clock["t"])
    args = [jnp.int32(0), jnp.ones(2)]
    seconds = autotune.interleaved_seconds({"default": step}, args, chain=lambda a, out: out,
                                           warmup=1, budget=0.0, rounds=(2, 2))
    k = autotune.MAX_CALLS_PER_SAMPLE  # 10 µs a call: 2 ms would be 200 calls
    assert seen == [0] + list(range(k)) * 2  # the warm-up's one call, then two samples
    assert seconds["default"] == pytest.approx(1e-5)
    seen.clear()
    autotune.interleaved_seconds({"default": step}, args, warmup=1, budget=0.0, rounds=(2, 2))
    assert seen == [0, 0, 0]  # without a chain: one call a sample, on the same arguments


def test_the_tuner_times_the_training_loop_a_user_runs(monkeypatch, untuned):
    """The calls of a tuning sample are steps of training: their losses are those of
    ``single_train_step`` run as many times from the same TrainState."""
    losses = []
    real = autotune.interleaved_seconds

    def record(calls, args, **how):
        def default(*a):
            out = calls["default"](*a)
            losses.append(float(out[3]))
            return out
        real({"default": default}, args, warmup=1, budget=0.0, rounds=(1, 1), **how)
        return dict.fromkeys(calls, 1.0)

    monkeypatch.setattr(autotune, "interleaved_seconds", record)
    monkeypatch.setattr(autotune, "SAMPLE_SECONDS", 1e9)
    monkeypatch.setattr(autotune, "MAX_CALLS_PER_SAMPLE", 5)
    ts, data = _problem()
    luxc.compile_step(luxc.MSELoss(), data, ts, compile_options=luxc.CompileOptions(autotune=True))
    expected, _ = untuned  # single_train_step's losses, five times from the same TrainState
    np.testing.assert_allclose(losses, expected[:1] + expected, rtol=1e-5)


def test_cpu_candidates_vary_passes_and_xla_options_the_user_left_free():
    names = lambda o, p="cpu": [c.name for c in candidates(p, o)]  # noqa: E731
    assert names(luxc.CompileOptions()) == ["default", "passes=none", "no YNN fusions",
                                            "no fusion emitters"]
    assert "passes=none" not in names(luxc.CompileOptions(passes=["fuse_rsqrt"]))
    assert "no fusion emitters" not in names(luxc.CompileOptions(
        xla_options={"xla_cpu_use_fusion_emitters": True}))
    assert names(luxc.CompileOptions(), "cuda") == ["default", "passes=none"]


def test_a_candidates_options_keep_the_users_and_turn_autotuning_off():
    base = luxc.CompileOptions(autotune=True, precision="highest",
                               xla_options={"xla_cpu_enable_fast_math": False})
    o = Candidate("x", "none", (("xla_cpu_use_fusion_emitters", False),)).options(base)
    assert (o.passes, o.precision, o.autotune) == ("none", "highest", False)
    assert dict(o.xla_options) == {"xla_cpu_enable_fast_math": False,
                                   "xla_cpu_use_fusion_emitters": False}


def test_tune_builds_every_candidate_and_returns_the_fastest_with_its_report():
    built = []

    class Exe:
        def __init__(self, options):
            self.options, self.call = options, None

    def build(options):
        built.append(options)
        return Exe(options)

    exe = tune(build, [], luxc.CompileOptions(autotune=True), "cpu", timer=_prefer("passes=none"))
    assert len(built) == 4 and exe.options.passes == "none"
    report = exe.autotune_report.as_dict()
    assert report["chosen"] == "passes=none"
    assert [c["median_seconds"] for c in report["candidates"]] == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("name", ["default", "passes=none", "no YNN fusions", "no fusion emitters"])
def test_the_tuned_step_computes_what_the_untuned_step_computes(monkeypatch, untuned, name):
    monkeypatch.setattr(autotune, "interleaved_seconds", _prefer(name))
    options = luxc.CompileOptions(autotune=True)
    ts, data = _problem()
    for _ in range(3):
        _, loss, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data,
                                                          ts, compile_options=options)
    # Donating, as the steps were: the cached entry they ran, not a second tuning.
    cs = luxc.compile_step(luxc.MSELoss(), data, ts, compile_options=options, donate=True)
    assert cs.autotune_report.chosen == name and luxc.cache_info(ts).misses == 1
    losses, parameters = untuned
    np.testing.assert_allclose(loss, losses[2], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ts.parameters), jax.tree.leaves(parameters[2])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_tuned_step_is_reused_from_the_cache_and_never_timed_again(monkeypatch):
    timed = []
    _time_briefly(monkeypatch, timed)
    ts, data = _problem()
    options = luxc.CompileOptions(autotune=True)
    for _ in range(3):
        _, _, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), data, ts,
                                                       compile_options=options)
    cs = luxc.compile_step(luxc.MSELoss(), data, ts, compile_options=options, donate=True)
    assert len(timed) == 1 and len(timed[0]) == 4
    info = luxc.runtime.cache_info(ts)
    assert info.misses == 1 and info.hits >= 1
    assert cs.autotune_report is not None


def test_tuning_never_consumes_the_users_donated_buffers(monkeypatch):
    _time_briefly(monkeypatch)  # every sample still runs the donating step, on copies
    ts, data = _problem()
    cs = luxc.compile_step(luxc.MSELoss(), data, ts, donate=True,
                           compile_options=luxc.CompileOptions(autotune=True))
    before = jax.tree.map(np.asarray, ts.parameters)  # readable: not donated by the tuning
    # the step's loss, evaluated op by op: the objective before the update
    eager = luxc.training.compute_objective(luxc.AutoJAX(), luxc.MSELoss(), data, ts)[0]
    _, loss, _, ts2 = cs(ts, data)
    assert float(loss) == pytest.approx(float(eager), rel=1e-5) and ts2.step == 1
    assert jax.tree.leaves(before)


def test_autotune_must_be_a_bool():
    with pytest.raises(ValueError, match="autotune must be True or False; received 'yes'"):
        luxc.CompileOptions(autotune="yes")


@pytest.fixture(scope="module")
def tuned_by_the_cli(tmp_path_factory):
    """``luxc compile --autotune``, ``luxc inspect`` (JSON and text) and ``luxc run`` of what it
    wrote, and ``luxc profile --autotune``, in one process: each command's result."""
    d = tmp_path_factory.mktemp("autotune")
    (d / "model_src.py").write_text(FACTORY)
    commands = [["compile", "model_src.py:factory", "--out", "tuned.luxc", "--autotune"],
                ["inspect", "tuned.luxc", "--json"], ["inspect", "tuned.luxc"],
                ["run", "tuned.luxc", "--steps", "2"],
                ["profile", "model_src.py:factory", "--autotune", "--steps", "5", "--json"]]
    return luxc_cli_each([(d, args) for args in commands])


@pytest.mark.slow
def test_compile_autotune_records_the_choice_in_the_manifest_and_inspect(tuned_by_the_cli):
    compiled, inspected, text, ran, _ = tuned_by_the_cli
    assert compiled.returncode == 0, compiled.stderr
    manifest = json.loads(inspected.stdout)
    record = manifest["autotune"]
    chosen = next(c for c in record["candidates"] if c["name"] == record["chosen"])
    assert [c["name"] for c in record["candidates"]] == ["default", "passes=none",
                                                         "no YNN fusions", "no fusion emitters"]
    assert all(c["median_seconds"] > 0 for c in record["candidates"])
    # The artifact was compiled with the kept candidate's options.
    assert manifest["compile_options"]["xla_options"] == chosen["xla_options"]
    assert manifest["compile_options"]["passes"] == (chosen["passes"] or "default")
    assert f"autotune    kept {record['chosen']} of default " in text.stdout
    assert ran.returncode == 0, ran.stderr


@pytest.mark.slow
def test_profile_autotune_reports_the_candidates(tuned_by_the_cli):
    r = tuned_by_the_cli[-1]
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)["autotune"]
    assert record["chosen"] in [c["name"] for c in record["candidates"]]
