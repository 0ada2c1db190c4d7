"""``python -m benchmarks``: the protocol (a process per framework, the load at every turn, the
refusal to publish a busy run) and the figures generated from its results."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import _slow, cases, report, run
from benchmarks._load import Load
from tests.support import ROOT


def _bench(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, timeout=timeout,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def quick_busy(tmp_path_factory):
    """One tiny quick run, two processes per framework, whose threshold every load exceeds,
    written anyway (--allow-busy)."""
    out = tmp_path_factory.mktemp("bench")
    r = _bench("--quick", "--allow-busy", "--max-load", "0", "--only", "tiny", "--processes", "2",
               "--variants", "luxc,jax.jit+optax,torch eager", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "RESULTS.md").read_text()


@pytest.mark.slow
def test_every_framework_runs_in_a_process_of_its_own(quick_busy):
    results, _ = quick_busy
    procs = results["workloads"][0]["processes"]
    assert set(procs) == {"luxc", "jax", "torch"}
    assert all(len(p["pids"]) == 2 and p["pid"] == p["pids"][0] for p in procs.values())
    assert len({pid for p in procs.values() for pid in p["pids"]} | {os.getpid()}) == 7
    assert procs["jax"]["modules"] == {"jax": True, "torch": False}
    assert procs["luxc"]["modules"]["torch"] is False
    assert procs["torch"]["modules"]["torch"] is True
    assert all(p["peak_rss_bytes"] > 10 * 2**20 for p in procs.values())


@pytest.mark.slow
def test_every_turn_records_the_load_at_its_start(quick_busy):
    results, _ = quick_busy
    rows = results["workloads"][0]["rows"]
    # 1 round, a turn for each of the 2 processes of each of the 3 frameworks
    assert sorted((r["group"], r["process"]) for r in rows) == [
        (g, i) for g in ("jax", "luxc", "torch") for i in (0, 1)]
    for row in rows:
        assert isinstance(row["load1"], float) and row["load1"] >= 0
        assert row["others"] is None or row["others"] >= 0
    assert set().union(*(r["seconds"] for r in rows)) == {"luxc", "jax.jit+optax", "torch eager"}


@pytest.mark.slow
def test_a_busy_run_written_anyway_marks_every_figure_busy(quick_busy):
    results, text = quick_busy
    assert results["run"]["busy"] and results["run"]["allow_busy"]
    table = [line for line in text.splitlines() if line.startswith("| ") and "ms/step" not in line]
    assert len(table) == 3
    for line in table:
        figures = [c for c in line.strip("|").split("|")[2:] if c.strip() != "-"]
        assert figures and all(c.strip().endswith("(busy)") for c in figures), line


@pytest.mark.slow
def test_a_busy_run_refuses_to_write_its_results(tmp_path):
    r = _bench("--quick", "--max-load", "0", "--only", "gemm", "--out", str(tmp_path))
    assert r.returncode == run.BUSY_STATUS
    assert "refused to write" in r.stderr.strip().splitlines()[-1]
    assert "--allow-busy" in r.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_device_on_a_machine_without_an_accelerator_says_so_in_one_line(tmp_path):
    r = _bench("--device", "--out", str(tmp_path), timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "python -m benchmarks --device: jax sees no accelerator on this machine (only the CPU); "
        "nothing measured (run it without --device)"]
    assert list(tmp_path.iterdir()) == []


def test_a_group_whose_package_is_missing_is_skipped_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cases, "missing_module", lambda group: "torch")
    args = run._parser().parse_args(["--quick"])
    args.rounds = 1
    work = run.measure_workload("tiny", ("torch",), args, run.LoadMeter(), _slow.SlowStretches())
    assert work["rows"] == [] and work["processes"] == {}
    skipped = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert skipped == ["  skipped the torch rows: torch is not installed (pip install -e '.[bench]')"]


def _results(rounds, busy=()):
    rows = [{"round": r, "group": g, "load1": 0.1, "others": 0.0, "seconds": {name: t}}
            for r, times in enumerate(rounds) for g, name, t in
            (("luxc", "luxc", times[0]), ("torch", "torch.compile", times[1]))]
    work = {"key": "mlp", "title": "MLP", "rows": rows, "processes": {}}
    run_ = {"command": "python -m benchmarks", "started": "now", "seconds": 60, "rounds": len(rounds),
            "cores": 2, "cpu": "cpu", "versions": {}, "start_load1": 0.1, "max_load": 0.7,
            "busy": list(busy)}
    return {"run": run_, "workloads": [work]}


# Seconds per step of (luxc, torch.compile) in three rounds: per-round ratios 2, 0.5 and 1.
_ROUNDS = [(0.002, 0.001), (0.003, 0.006), (0.001, 0.001)]


def test_ratios_are_medians_of_per_round_ratios_not_ratios_of_medians():
    # The medians' ratio would be 2 ms / 1 ms = 2.
    (luxc,) = [v for v in report.summary(_results(_ROUNDS)["workloads"][0]) if v["variant"] == "luxc"]
    assert luxc["vs_peer"] == 1.0 and luxc["median"] == 0.002


def test_a_rounds_figure_is_the_median_over_the_frameworks_processes():
    work = _results(_ROUNDS)["workloads"][0]
    # Two more luxc processes per round: one 3x slower, one 1.5x slower than the first.
    work["rows"] += [{**row, "process": i, "seconds": {"luxc": row["seconds"]["luxc"] * k}}
                     for row in work["rows"] if row["group"] == "luxc" for i, k in ((1, 3), (2, 1.5))]
    (luxc,) = [v for v in report.summary(work) if v["variant"] == "luxc"]
    # Each round's luxc figure is now 1.5x the first process's: per-round ratios 3, 0.75, 1.5.
    assert luxc["vs_peer"] == 1.5 and luxc["median"] == 0.003
    assert luxc["spread"] == 3.0
    (torch,) = [v for v in report.summary(work) if v["variant"] == "torch.compile"]
    assert torch["spread"] is None


def test_the_readme_table_is_generated_from_the_results_and_marks_a_busy_run():
    quiet = report.readme_table(_results(_ROUNDS))
    assert quiet.splitlines()[2] == "| MLP: luxc | 2 | torch.compile | 1 | 1.00 |"
    busy = report.readme_table(_results(_ROUNDS[:1], busy=["load"]))
    assert busy.splitlines()[2].count("(busy)") == 3


def test_the_run_is_busy_when_the_start_or_any_turn_exceeds_the_threshold():
    quiet = _results(_ROUNDS[:1])["workloads"]
    assert run.busy_reasons(Load(0.3, None), quiet, 0.7) == []
    assert "load average was 0.90 at the start" in run.busy_reasons(Load(0.9, None), quiet, 0.7)[0]
    quiet[0]["rows"][1]["others"] = 1.2
    (reason,) = run.busy_reasons(Load(0.3, None), quiet, 0.7)
    assert reason == "other processes used 1.20 cores before mlp's round 0 (torch)"


class _LoggedStep:
    """A fake variant's step: logs each call; its result can be waited on."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __call__(self):
        self.log.append(self.name)
        return self

    def block_until_ready(self):
        return self


def test_every_sample_of_a_turn_follows_one_untimed_step_of_its_own_variant():
    from benchmarks import worker

    log = []
    built = {n: _LoggedStep(n, log) for n in ("a", "b", "c")}
    reply = worker._round(built, steps=3, seed=1)
    seconds = reply["seconds"]
    order = list(seconds)
    assert sorted(order) == ["a", "b", "c"]
    # 1 untimed + 3 timed calls a variant, the variants one after the other, in the timed order
    assert log == [n for n in order for _ in range(4)]
    # the order is the round's seed's: every process of a round times the same order
    assert list(worker._round(built, steps=1, seed=1)["seconds"]) == order
    assert all(s >= 0 for s in seconds.values())
    # the machine's probe, before and after the samples
    assert reply["event"] == "round" and len(reply["probe"]) == 2
    assert all(p > 0 for p in reply["probe"])


class _ProbedWorker:
    """A worker whose turns' probes are scripted: one (before, after) pair per turn asked."""

    name = "luxc (tiny)"

    def __init__(self, probes):
        self.probes, self.asked = list(probes), 0

    def ask(self, command, event):
        self.asked += 1
        return {"event": event, "seconds": {"luxc": 1e-3 * self.asked}, "probe": self.probes.pop(0)}


def test_a_turn_in_a_slow_stretch_is_taken_again_and_the_kept_one_is_recorded():
    from benchmarks import _load

    stretches, meter = _slow.SlowStretches(), _load.LoadMeter()
    assert run._turn(_ProbedWorker([(0.008, 0.0082)]), 0, meter, stretches)["retakes"] == 0
    # 1.7x the fastest probe (as in the stretches of 2026-12-06): taken again, the second kept
    worker = _ProbedWorker([(0.008, 0.0136), (0.0081, 0.008)])
    row = run._turn(worker, 1, meter, stretches)
    assert worker.asked == 2 and row["retakes"] == 1 and row["seconds"] == {"luxc": 2e-3}
    assert row["slowness"] == pytest.approx(0.0081 / 0.008, abs=1e-3)
    # still slow after MAX_RETAKES: the last turn is kept, with how slow it was
    worker = _ProbedWorker([(0.016, 0.016)] * (_slow.MAX_RETAKES + 1))
    row = run._turn(worker, 2, meter, stretches)
    assert worker.asked == _slow.MAX_RETAKES + 1 and row["retakes"] == _slow.MAX_RETAKES
    assert row["slowness"] == pytest.approx(2.0)
    line = report.slow_stretches([{"slowness": 1.0, "retakes": 1}, row])
    assert line == ("; turns taken again in a slow stretch: 3; turns still slow after 2 retakes: "
                    "1 (probe up to 2.00x its fastest)")
    assert report.slow_stretches([{"load1": 0.1}]) == ""  # a run from before the probe


def test_the_probe_is_judged_against_the_fastest_of_the_run():
    stretches = _slow.SlowStretches()
    assert stretches.slowness([0.016, 0.016]) == 1.0  # the run began in a stretch: nothing known
    assert stretches.slowness([0.008, 0.008]) == 1.0  # a faster probe becomes the reference
    assert stretches.slowness([0.016, 0.008]) == 2.0  # the stretch began during the turn
    assert _slow.take_again(2.0, 0) and not _slow.take_again(2.0, _slow.MAX_RETAKES)
    assert not _slow.take_again(_slow.SLOW, 0)


def test_a_turn_of_milliseconds_is_not_read_as_cores_busy(monkeypatch):
    """/proc/stat moves in whole 10 ms ticks: one tick over a 2 ms turn (a process whose variants
    were all filtered out) had read as 5 cores busy on an idle machine (2026-12-06). A mark
    within MIN_WINDOW of the previous one extends that mark's window."""
    from benchmarks import _load

    clock, busy = [100.0], [0]
    monkeypatch.setattr(_load.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_load, "_busy_ticks", lambda: busy[0])
    monkeypatch.setattr(_load, "_tree_ticks", lambda pid: 0)
    meter = _load.LoadMeter()
    clock[0], busy[0] = 102.0, 4  # 2 s, 4 ticks of someone else's: 0.02 cores
    assert meter.mark().others == pytest.approx(0.02)
    clock[0], busy[0] = 102.002, 5  # 2 ms later, one more tick: read alone, 5 cores
    assert meter.mark().others == pytest.approx(5 / _load._TICK / 2.002, abs=1e-3)
    clock[0], busy[0] = 104.002, 5  # 2 s on, nothing more: the window restarts at 102.002
    assert meter.mark().others == 0.0


def test_results_end_with_luxc_against_its_peer_on_each_cpu_kept(tmp_path):
    """The same code on another CPU gives other ratios: the last accepted full run of each
    other CPU is kept in runs/ and RESULTS.md ends with every CPU's luxc ÷ fastest peer."""
    here, there = _results(_ROUNDS), _results([(0.004, 0.002)])
    there["run"].update(cpu="Other CPU 9000", started="2026-12-05 23:42 UTC")
    record = report.cpu_record(tmp_path, there["run"]["cpu"])
    assert record == tmp_path / "runs" / "other-cpu-9000.json"
    record.parent.mkdir()
    record.write_text(json.dumps(there))
    report.cpu_record(tmp_path, "cpu").write_text(json.dumps(here))  # this CPU's: not a column twice
    others = report.other_cpus(tmp_path, here)
    assert [o["run"]["cpu"] for o in others] == ["Other CPU 9000"]
    text = report.render(here, others)
    table = text[text.index("## luxc ÷ its fastest peer on each CPU"):].splitlines()
    assert table[4] == "| workload: variant | cpu, now | Other CPU 9000, 2026-12-05 |"
    assert table[6] == "| MLP: luxc | 1.00 | 2.00 |"
    assert "on each CPU" not in report.render(here)


def test_only_a_full_idle_run_becomes_its_cpus_record():
    full = run._parser().parse_args([])
    assert run.kept_per_cpu(full, [])
    assert not run.kept_per_cpu(full, ["the 1-minute load average was 1.02 at the start"])
    for flags in (["--quick"], ["--only", "mlp"], ["--variants", "luxc"], ["--device"]):
        assert not run.kept_per_cpu(run._parser().parse_args(flags), []), flags


def test_a_short_variant_takes_several_samples_a_turn_interleaved_and_keeps_their_median(monkeypatch):
    from benchmarks import worker

    log = []
    built = {n: _LoggedStep(n, log) for n in ("a", "b")}
    times = iter([0.5, 0.1, 0.3, 0.2])  # a, b, a, a: the seconds of each sample in turn
    monkeypatch.setattr(worker, "_timed_sample", lambda step, n: (step(), next(times))[1])
    reply = worker._round(built, steps=1, seed=0, samples={"a": 3, "b": 1})
    assert list(reply["seconds"]) == ["a", "b"]  # seed 0's order
    assert reply["seconds"] == {"a": 0.3, "b": 0.1}
    # one untimed step before each variant's first sample, then the variants take turns
    assert log == ["a", "a", "b", "b", "a", "a"]


def test_samples_per_turn_fill_half_a_second_and_are_no_more_than_seven():
    from benchmarks import worker

    assert worker.samples_per_turn(0.007) == worker.MAX_SAMPLES == 7
    assert worker.samples_per_turn(0.225) == 3  # the transformer block's sample
    assert worker.samples_per_turn(0.5) == 1 and worker.samples_per_turn(2.0) == 1
