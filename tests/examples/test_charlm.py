"""examples/charlm.py --quick: real text, a loss below the unigram entropy, exact resume."""

import functools
import math
import shutil

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from luxc.examples import charlm  # noqa: E402


def test_split_is_by_file_and_deterministic():
    a, b = charlm.load_corpus(50_000), charlm.load_corpus(50_000)
    np.testing.assert_array_equal(a.train, b.train)
    assert a.train_files > 5 * a.validation_files > 0
    # The unigram entropy from numpy's bincount against a direct count over the characters.
    counts = {}
    for t in a.train.tolist():
        counts[t] = counts.get(t, 0) + 1
    n = len(a.train)
    direct = -sum(c / n * math.log2(c / n) for c in counts.values())
    assert charlm.unigram_bits(a.train, len(a.chars)) == pytest.approx(direct, rel=1e-9)


@pytest.mark.slow
def test_quick_run_learns_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    train = charlm.train

    def killed_after_the_last_step(line):
        print(line)
        if line.startswith("step    40/"):  # step 40 trained, its checkpoint not yet written
            # what a run killed right now leaves on disk: the step-20 checkpoint and run.json
            shutil.copytree(tmp_path / "a", tmp_path / "b")

    # one run is both the uninterrupted run and, copied mid-way, the killed one
    monkeypatch.setattr(charlm, "train", functools.partial(train, log=killed_after_the_last_step))
    result = charlm.main(["--quick", "--out", str(tmp_path / "a"), "--sample-length", "50"])
    assert result["val_bpc"] < result["unigram_bpc"] - 0.3
    for name in ("loss.png", "sample.txt", "checkpoint.safetensors", "run.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert result["sample"].startswith("def ") and len(result["sample"]) == 54
    assert "tokens/s" in capsys.readouterr().out

    cfg, _ = charlm.parse_args(["--quick"])
    lines = []
    ts, history, _ = train(cfg, tmp_path / "b", resume=True, log=lines.append)
    assert lines[0].endswith("at step 20")
    assert history.val_bpc == result["history"].val_bpc  # bit-identical to the uninterrupted run
    with pytest.raises(SystemExit, match="--resume"):
        train(cfg, tmp_path / "b", log=lambda line: None)
    with pytest.raises(SystemExit, match="dim: 32 -> 48"):
        train(charlm.parse_args(["--quick", "--dim", "48"])[0], tmp_path / "b",
              resume=True, log=lambda line: None)


@pytest.mark.slow
def test_quick_run_in_bf16_and_with_a_tied_head(tmp_path):
    cfg, _ = charlm.parse_args(["--quick", "--bf16"])
    ts, history, corpus = charlm.train(cfg, tmp_path / "bf16", log=lambda line: None)
    assert history.val_bpc[-1] < charlm.unigram_bits(corpus.train, len(corpus.chars)) - 0.3
    # Master weights stay float32 under mixed precision.
    assert ts.parameters["head"]["weight"].dtype == np.float32
    cfg, _ = charlm.parse_args(["--quick", "--tied"])
    ts, history, _ = charlm.train(cfg, tmp_path / "tied", log=lambda line: None)
    assert "head" not in ts.parameters  # the head is the transposed token embedding
    assert history.val_bpc[-1] < history.val_bpc[0] - 0.2
