"""``luxc run``: train with an artifact, without the model's source.

This module parses and checks the command line, loads the artifact, opens the run (its record,
a resumed checkpoint, the datasets) and turns the flags into a
:class:`~luxc.runtime.artifacts._run_loop.RunPlan`;
:func:`luxc.runtime.artifacts._run_loop.train` runs it (the loop ``LoadedStep.run`` also
runs), with :class:`~luxc.cli.run_session.Session`'s hooks printing and saving as it goes."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from luxc.cli import run_checkpoints as checkpoints
from luxc.cli import run_outputs as outputs
from luxc.cli._common import CliError, load_artifact, unchecked_native_calls_option
from luxc.cli.run_log import RunLog, check_log
from luxc.cli.run_session import Flags, Interrupt, Session
from luxc.runtime.artifacts._checkpoint_format import MAX_SEED
from luxc.runtime.artifacts._run_loop import RunPlan

_MAX_STEPS = 1 << 40


def _check_plot(path: str, directory: str) -> None:
    if Path(path).suffix.lower() != ".png":
        raise CliError(f"--plot {path}: luxc writes the loss curve as PNG; give a .png name")
    outputs.check_new_file(path, directory, "--plot")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install matplotlib "
                       "(or pip install 'luxc[examples]')") from None


@click.command()
@click.argument("directory", type=click.Path())
@click.option("--steps", type=click.IntRange(min=1, max=_MAX_STEPS),
              help="train to this many steps from the start of the run (default 10, or one "
                   "pass over --data)")
@click.option("--epochs", type=click.IntRange(min=1, max=_MAX_STEPS),
              help="with --data: passes over the dataset (N // batch steps each)")
@click.option("--data", "data_path", type=click.Path(),
              help="an .npz of the data arrays with N samples on their leading axis, in the order "
                   "`luxc inspect` lists them (np.savez(F, x, y) keeps that order), or a directory "
                   "of .npy files (read per batch, in name order); N larger than the "
                   "artifact's batch: shuffled batches each epoch; default: the example data "
                   "stored in the artifact")
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED),
              help="the data order's seed (default 0; with --state, the new run's)")
@click.option("--eval-data", "eval_path", type=click.Path(),
              help="evaluate the objective (test mode, no update) on all the samples of this "
                   ".npz (or directory of .npy files, as --data) as the run goes")
@click.option("--follow-symlinks", is_flag=True,
              help="follow symbolic links inside a --data/--eval-data directory (refused by "
                   "default: a stranger's link may point at your own files)")
@click.option("--max-data-memory", default=512, show_default=True,
              type=click.IntRange(min=1), metavar="MIB",
              help="the most memory a dataset may take: inflated np.savez_compressed members, "
                   "the epoch's shuffle, the whole --eval-data (.npy files and np.savez members "
                   "are read per batch)")
@click.option("--eval-every", type=click.IntRange(min=1, max=_MAX_STEPS),
              help="steps between evaluations (default: about ten in the run, and at its end)")
@click.option("--state", "state_path", type=click.Path(dir_okay=False),
              help="start from this checkpoint (written by luxc run or luxc.save_state)")
@click.option("--save-state", type=click.Path(dir_okay=False),
              help="write the final state here, as a checkpoint luxc.load_state reads")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(file_okay=False),
              help="write checkpoints into this directory as the run goes")
@click.option("--checkpoint-every", type=click.IntRange(min=1, max=_MAX_STEPS),
              help="steps between checkpoints (default: about ten in the run)")
@click.option("--keep", default=3, show_default=True, type=click.IntRange(min=1),
              help="how many of the newest checkpoints to keep")
@click.option("--resume", is_flag=True, help="continue the run in --checkpoint (the one that "
              "started last there) from its newest checkpoint: the same batches in the same "
              "order, the same numbers")
@click.option("--new-run", is_flag=True, help="start a new run in a --checkpoint directory "
              "that holds another run's checkpoints (they are kept; --keep counts this run's)")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="write one JSON object per logged step ({\"step\", \"loss\", every stat}) to "
                   "this file")
@click.option("--steps-per-call", default=1, show_default=True,
              type=click.IntRange(min=1, max=_MAX_STEPS),
              help="run K steps in one compiled call (the losses still print per step)")
@click.option("--every", type=click.IntRange(min=1),
              help="print the loss every N steps (default: each step up to 20, else ~10 lines)")
@click.option("--quiet", "-q", is_flag=True, help="no loss lines or progress bar, only the summary")
@click.option("--plot", type=click.Path(dir_okay=False), help="write the loss curve to this PNG "
              "(needs matplotlib)")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="stop if the steps have not finished after this long (Ctrl-C always stops "
                   "an artifact you did not sign)")
@click.option("--allow-device-kernels", is_flag=True, help="run compiled GPU/TPU kernels (Mosaic, "
              "Pallas) in an artifact you did not sign: only if you trust its author")
@unchecked_native_calls_option
def run(**flags: Any) -> None:
    """Train with the artifact in DIRECTORY (no model source needed).

    Prints the loss every --every steps (a progress bar on a terminal), the loss and stats on
    --eval-data every --eval-every steps (`eval step N  loss ...`), then a summary: steps,
    wall time, steps/s, first and last loss, and which executable ran (the artifact's
    serialized one, or one compiled from its portable StableHLO). Ctrl-C writes a checkpoint
    (with --checkpoint or --save-state) and exits with status 130; SIGTERM (kill, a job
    scheduler's stop) does the same and exits with status 143.
    """
    _run(Flags(**flags))


def _run(f: Flags) -> None:
    interrupt = Interrupt()
    _check_flags(f)  # every output checked before any work: a refusal loses nothing
    found = checkpoints.open_directory(f.checkpoint_dir, f.directory, resume=f.resume,
                                       beside=f.new_run) if f.checkpoint_dir else []
    t0 = time.perf_counter()
    loaded = load_artifact(f.directory, allow_device_kernels=f.allow_device_kernels,
                           allow_unchecked_native_calls=f.allow_unchecked_native_calls)
    load_seconds = time.perf_counter() - t0
    record, resumed_from = _run_record(f, loaded, found)
    dataset, eval_data = _datasets(f, loaded, record["seed"])
    plan = _plan(f, record["origin"], dataset)
    if plan.end <= loaded.step_count:
        click.echo(f"nothing to do: the state is at step {loaded.step_count}, the run ends at "
                   f"step {plan.end}")
        return
    for n in plan.segment_lengths(loaded.step_count):
        loaded.prepare(plan.steps_per_call, n, stacked=dataset is not None)
    if interrupt.requested:  # while loading or compiling: nothing written yet
        click.echo(f"{interrupt.what} before the first step; nothing was written", err=True)
        sys.exit(interrupt.exit_code)
    if f.checkpoint_dir:
        checkpoints.claim(f.checkpoint_dir, found, record["run_id"], loaded.step_count + 1,
                          plan.end)
    log = RunLog.open(f.log_path, record.get("log") if resumed_from else None, f.resume) \
        if f.log_path else None
    session = Session(f, loaded, plan, record, log, interrupt, eval_data)
    first_step, t0 = loaded.step_count + 1, time.perf_counter()
    try:
        with interrupt:
            session.train(dataset)
    finally:  # rows already written reach the file, however the run ends
        if log is not None:
            log.close()
    seconds = time.perf_counter() - t0
    if resumed_from is not None:
        click.echo(f"resumed from {resumed_from} (step {first_step - 1})")
    session.summary(first_step, seconds, load_seconds)


def _check_flags(f: Flags) -> None:
    outputs.check_distinct({"--log": f.log_path, "--save-state": f.save_state, "--plot": f.plot},
                           f.checkpoint_dir)
    if f.save_state:
        outputs.check_state_file(f.save_state, f.directory, "--save-state")
    if (f.resume or f.new_run) and not f.checkpoint_dir:
        raise CliError(f"--{'resume' if f.resume else 'new-run'} is about the run in "
                       "--checkpoint DIR; give --checkpoint")
    if f.resume and f.new_run:
        raise CliError("give --resume (continue the run in --checkpoint) or --new-run, not both")
    if f.log_path:
        check_log(f.log_path, f.directory, f.resume)
    if f.plot:
        _check_plot(f.plot, f.directory)
    _check_counts(f)


def _check_counts(f: Flags) -> None:
    if f.eval_every and not f.eval_path:
        raise CliError("--eval-every counts steps between evaluations on --eval-data; give "
                       "--eval-data")
    if f.epochs and not f.data_path:
        raise CliError("--epochs counts passes over --data; give --data, or --steps")
    if f.epochs and f.steps:
        raise CliError("give --steps or --epochs, not both")


def _run_record(f: Flags, loaded: Any, found: list[checkpoints.Found]
                ) -> tuple[dict[str, Any], str | None]:
    """The run's record (seed, origin, id) and the checkpoint it resumes from (or ``None``)."""
    artifact = checkpoints.artifact_digest(loaded.manifest)
    record = checkpoints.new_run(artifact, f.directory, f.seed or 0, loaded.step_count)
    if f.state_path:  # a new run from that state; --seed, if given, is its seed
        earlier = loaded.load_state(f.state_path) or {}
        record = checkpoints.new_run(artifact, f.directory,
                                     earlier.get("seed", 0) if f.seed is None else f.seed,
                                     earlier.get("origin", loaded.step_count))
    resumed = checkpoints.resume(loaded.load_state, f.checkpoint_dir, found, artifact,
                                 f.directory) if f.resume else None
    if resumed is None:
        return record, None
    resumed_from, record = resumed
    if f.seed is not None and f.seed != record["seed"]:
        raise CliError(f"--seed {f.seed}: the run in {f.checkpoint_dir} uses seed "
                       f"{record['seed']}; resume it without --seed")
    return record, resumed_from


def _datasets(f: Flags, loaded: Any, seed: int) -> tuple[Any, list[Any] | None]:
    """The training dataset (``None``: the artifact's example data) and the evaluation data."""
    from luxc.runtime.data._dataset import Dataset

    specs, names = loaded.manifest.data_inputs, loaded.layout.data_names
    read = dict(follow_symlinks=f.follow_symlinks, max_memory=f.max_data_memory << 20)
    dataset = Dataset(f.data_path, specs, names, seed, **read) if f.data_path else None
    if not f.eval_path:
        return dataset, None
    if loaded.evaluator is None:
        raise CliError(f"{f.directory} holds no evaluation program (its objective could not "
                       "be exported for any batch size, or an older luxc compiled it); "
                       "recompile it to use --eval-data")
    # The evaluation program's batch axis is symbolic: any number of samples >= 1.
    return dataset, Dataset(f.eval_path, specs, names, evaluation=True, **read).arrays()


def _plan(f: Flags, origin: int, dataset: Any) -> RunPlan:
    many = dataset is not None and dataset.samples > dataset.batch_size
    total = f.steps or (f.epochs * dataset.batches_per_epoch if f.epochs else
                        dataset.batches_per_epoch if many else 10)
    if origin + total > _MAX_STEPS:
        raise CliError(f"the run would end at step {origin + total}; luxc counts steps up to "
                       f"{_MAX_STEPS}: give fewer --steps or --epochs")
    # Lines, log rows, checkpoints and evaluations at the same steps whether or not the run
    # was resumed.
    return RunPlan.spread(origin, total, steps_per_call=f.steps_per_call,
                          checkpoint_every=f.checkpoint_every, eval_every=f.eval_every)
