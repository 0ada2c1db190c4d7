"""The trained model for inference: the artifact's forward pass (`luxc predict`,
`luxc.load(DIR).predict(x)`) on batch sizes it never saw, against the model's own forward pass
in Python, `model(x, ps, testmode(st))` (eager AutoJAX)."""

import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import luxc
from tests.support import compile_then_run_each

# BatchNorm: test mode must use the running statistics, which training changes.
FACTORY = textwrap.dedent("""
    import jax, jax.numpy as jnp, optax, luxc
    from luxc import nn

    def factory():
        model = nn.Chain(nn.Dense(3, 8, jax.nn.relu), nn.BatchNorm(8), nn.Dense(8, 2))
        ps, st = luxc.setup(jax.random.key(0), model)
        x = jnp.linspace(-1, 1, 24).reshape(8, 3)
        return luxc.MSELoss(), (x, jnp.stack([x.sum(1), x[:, 0]], 1)), \\
            luxc.TrainState(model, ps, st, optax.adam(1e-2))
""")


def _factory(directory):
    namespace: dict = {}
    exec((directory / "model_src.py").read_text(), namespace)
    return namespace["factory"]()


WRONG_INPUTS = {  # the message -> how the input is written
    "x (--input bad.npy) has shape [4, 5]; the model takes float32[b, 3]":
        lambda d: np.save(d / "bad.npy", np.zeros((4, 5), np.float32)),
    "x (--input bad.npy) has dtype int64; the model takes float32[b, 3]":
        lambda d: np.save(d / "bad.npy", np.zeros((4, 3), np.int64)),
    "holds Python objects":
        lambda d: np.save(d / "bad.npy", np.array([None] * 3, dtype=object).reshape(1, 3),
                          allow_pickle=True),
}


def _cases(mkdir, work):
    """Each case after ``luxc compile``: (its directory, its commands, run there in order)."""
    art = work / "step.luxc"
    cases = {"predict": (work, [["predict", "step.luxc", "--input", "x.npy", "--out", "y.npy"]])}
    d = mkdir("checkpoint")
    cases["checkpoint"] = (d, [["run", art, "--steps", "3", "--save-state", d / "c.st"],
                               ["predict", art, "--input", work / "x.npy", "--state", d / "c.st",
                                "--out", d / "y.npy"]])
    d = mkdir("out")
    (d / "notes.npy").write_text("my notes")
    cases["out"] = (d, [["predict", art, "--input", work / "x.npy", "--out", out]
                        for out in (d / "notes.npy", d / "y.txt", art / "y.npy")])
    for message, make in WRONG_INPUTS.items():
        d = mkdir("wrong-input")
        make(d)
        cases[message] = (d, [["predict", art, "--input", "bad.npy", "--out", "y.npy"]])
    return cases


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``luxc compile`` of FACTORY, then every case of ``_cases``, in ONE fresh process (one
    jax start instead of one a command): (the directory of the artifact, its source and x.npy,
    case -> (its directory, its commands' results))."""
    work = tmp_path_factory.mktemp("predict")
    (work / "model_src.py").write_text(FACTORY)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)  # batch 5, never seen
    np.save(work / "x.npy", x)
    cases = _cases(tmp_path_factory.mktemp, work)
    return work, compile_then_run_each(work, cases)


@pytest.fixture(scope="module")
def work(compiled):
    return compiled[0]


@pytest.fixture(scope="module")
def runs(compiled):
    return compiled[1]


def _reference(ts, x):
    y, _ = ts.model(jnp.asarray(x), ts.parameters, luxc.testmode(ts.states))
    return np.asarray(y)


def test_load_predict_equals_the_models_forward_pass_on_an_unseen_batch_size(work):
    ts = _factory(work)[2]
    loaded = luxc.load(work / "step.luxc")
    for batch in (1, 13):
        x = np.random.default_rng(batch).normal(size=(batch, 3)).astype(np.float32)
        np.testing.assert_allclose(loaded.predict(x), _reference(ts, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(luxc.runtime.ArtifactError, match=r"^x has shape \[2, 4\]; the "
                       r"model takes float32\[b, 3\]"):
        loaded.predict(np.zeros((2, 4), np.float32))


@pytest.mark.slow
def test_luxc_predict_equals_the_models_forward_pass_with_the_artifacts_parameters(work, runs):
    _, (r,) = runs["predict"]
    assert r.returncode == 0, r.stderr
    y = np.load(work / "y.npy")
    assert y.shape == (5, 2)
    np.testing.assert_allclose(y, _reference(_factory(work)[2], np.load(work / "x.npy")),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_luxc_predict_uses_a_checkpoints_parameters_after_luxc_run(work, runs):
    d, (run, predict) = runs["checkpoint"]
    assert run.returncode == 0, run.stderr
    assert predict.returncode == 0, predict.stderr
    trained = luxc.load_state(d / "c.st", like=_factory(work)[2])
    assert trained.step == 3
    y, x = np.load(d / "y.npy"), np.load(work / "x.npy")
    np.testing.assert_allclose(y, _reference(trained, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(y, _reference(_factory(work)[2], x), atol=1e-4)  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("message", WRONG_INPUTS)
def test_a_wrong_input_is_one_line_and_writes_nothing(runs, message):
    d, (r,) = runs[message]
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (d / "y.npy").exists()


@pytest.mark.slow
def test_out_is_checked_before_work_and_never_overwrites_another_file(work, runs):
    d, results = runs["out"]
    for r, message in zip(results, ["exists and is not a .npy array", "give a .npy name",
                                    "is inside the artifact"], strict=True):
        assert r.returncode != 0 and message in r.stderr, r.stderr
    assert (d / "notes.npy").read_text() == "my notes"
    assert not (work / "step.luxc" / "y.npy").exists()


def test_an_unsigned_artifacts_forward_pass_is_checked_in_the_child_first(work, tmp_path,
                                                                          monkeypatch):
    import shutil

    from luxc.runtime.artifacts import _artifact as artifact
    from luxc.runtime.artifacts import _forward as forward

    shutil.copytree(work / "step.luxc", tmp_path / "stranger.luxc")
    (tmp_path / "stranger.luxc" / "manifest.sig").unlink()  # as from someone else
    checked = []
    original = forward.check_untrusted
    monkeypatch.setattr(forward, "check_untrusted",
                        lambda module, what, **kw: checked.append(what) or original(module, what,
                                                                                       **kw))
    x = np.random.default_rng(3).normal(size=(6, 3)).astype(np.float32)
    np.testing.assert_allclose(artifact.load_predictor(tmp_path / "stranger.luxc").predict(x),
                               _reference(_factory(work)[2], x), rtol=1e-5, atol=1e-6)
    assert len(checked) == 1 and "forward.jaxexport" in checked[0]
    artifact.load_predictor(work / "step.luxc")  # signed by this user: no check needed
    assert len(checked) == 1
