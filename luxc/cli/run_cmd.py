"""``luxc run``: train with an artefact, without the model's source."""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

import click

from luxc.cli import run_checkpoints as checkpoints
from luxc.cli import run_outputs as outputs
from luxc.cli._common import CliError, load_artifact, unchecked_native_calls_option
from luxc.cli.run_log import RunLog, check_log
from luxc.runtime.artifacts._checkpoint_format import MAX_SEED
from luxc.runtime.messages._shown import shown as escaped
from luxc.runtime.trust._guarded_call import GRACE_SECONDS, StepInterrupted

_MAX_STEPS = 1 << 40
_PLOT_POINTS = 4096  # a loss curve keeps at most this many points: memory stays bounded


def _every(every: int | None, steps: int) -> int:
    # Every step of a short run; about ten lines of a long one.
    return every or (1 if steps <= 20 else math.ceil(steps / 10))


def _check_plot(path: str, directory: str) -> None:
    if Path(path).suffix.lower() != ".png":
        raise CliError(f"--plot {path}: luxc writes the loss curve as PNG; give a .png name")
    outputs.check_new_file(path, directory, "--plot")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install matplotlib "
                       "(or pip install 'luxc[examples]')") from None


def _plot(points: list[tuple[int, float]], path: str, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([s for s, _ in points], [v for _, v in points])
    ax.set(xlabel="step", ylabel="loss", title=title,
           yscale="log" if min(v for _, v in points) > 0 else "linear")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


class _Curve:
    """First and last loss, and a curve of at most _PLOT_POINTS points (every 2**j-th step)."""

    def __init__(self, keep: bool):
        self.keep, self.stride, self.points = keep, 1, []
        self.first = self.last = None

    def add(self, step: int, loss: float) -> None:
        self.first = loss if self.first is None else self.first
        self.last = loss
        if self.keep and step % self.stride == 0:
            self.points.append((step, loss))
            if len(self.points) > _PLOT_POINTS:
                self.stride *= 2
                self.points = [p for p in self.points if p[0] % self.stride == 0]


class _Interrupt:
    """The first Ctrl-C asks the run to stop after the current call (then a checkpoint is
    written); a second one stops at once. Installed when the command starts: a Ctrl-C while the
    artefact loads or compiles is not lost in a callback (jax's gc hook swallowed it, and the
    run then trained to its end) but stops the run before its first step."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGINT, self._handle)
        click.get_current_context().call_on_close(self.__exit__)

    def __enter__(self):
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._old)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


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
                   "artefact's batch: shuffled batches each epoch; default: the example data "
                   "stored in the artefact")
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
                   "an artefact you did not sign)")
@click.option("--allow-device-kernels", is_flag=True, help="run compiled GPU/TPU kernels (Mosaic, "
              "Pallas) in an artefact you did not sign: only if you trust its author")
@unchecked_native_calls_option
def run(directory, steps, epochs, data_path, seed, eval_path, follow_symlinks,
        max_data_memory, eval_every, state_path, save_state,
        checkpoint_dir, checkpoint_every, keep, resume, new_run, log_path, steps_per_call, every,
        quiet, plot, time_limit, allow_device_kernels, allow_unchecked_native_calls):
    """Train with the artefact in DIRECTORY (no model source needed).

    Prints the loss every --every steps (a progress bar on a terminal), the loss and stats on
    --eval-data every --eval-every steps (`eval step N  loss ...`), then a summary: steps,
    wall time, steps/s, first and last loss, and which executable ran (the artefact's
    serialized one, or one compiled from its portable StableHLO). Ctrl-C writes a checkpoint
    (with --checkpoint or --save-state) and exits with status 130.
    """
    interrupt = _Interrupt()
    # Every output checked before any work: a refusal loses nothing.
    outputs.check_distinct({"--log": log_path, "--save-state": save_state, "--plot": plot},
                           checkpoint_dir)
    if save_state:
        outputs.check_state_file(save_state, directory, "--save-state")
    if (resume or new_run) and not checkpoint_dir:
        raise CliError(f"--{'resume' if resume else 'new-run'} is about the run in --checkpoint "
                       "DIR; give --checkpoint")
    if resume and new_run:
        raise CliError("give --resume (continue the run in --checkpoint) or --new-run, not both")
    if log_path:
        check_log(log_path, directory, resume)
    if plot:
        _check_plot(plot, directory)
    if eval_every and not eval_path:
        raise CliError("--eval-every counts steps between evaluations on --eval-data; give "
                       "--eval-data")
    if epochs and not data_path:
        raise CliError("--epochs counts passes over --data; give --data, or --steps")
    if epochs and steps:
        raise CliError("give --steps or --epochs, not both")
    found = checkpoints.open_directory(checkpoint_dir, directory, resume=resume,
                                       beside=new_run) if checkpoint_dir else []
    t0 = time.perf_counter()
    loaded = load_artifact(directory, allow_device_kernels=allow_device_kernels,
                           allow_unchecked_native_calls=allow_unchecked_native_calls)
    load_seconds = time.perf_counter() - t0
    n_state = loaded.layout["n_state"]
    artifact = checkpoints.artifact_digest(loaded.manifest)
    run_record = checkpoints.new_run(artifact, directory, seed or 0, loaded.step_count)
    if state_path:  # a new run from that state; --seed, if given, is its seed
        earlier = loaded.load_state(state_path) or {}
        run_record = checkpoints.new_run(artifact, directory,
                                         earlier.get("seed", 0) if seed is None else seed,
                                         earlier.get("origin", loaded.step_count))
    resumed_from = None
    if resume:
        resumed = checkpoints.resume(loaded.load_state, checkpoint_dir, found, artifact, directory)
        if resumed is not None:
            resumed_from, run_record = resumed
            if seed is not None and seed != run_record["seed"]:
                raise CliError(f"--seed {seed}: the run in {checkpoint_dir} uses seed "
                               f"{run_record['seed']}; resume it without --seed")
    from luxc.runtime.data._dataset import Dataset

    dataset = None
    read = dict(follow_symlinks=follow_symlinks, max_memory=max_data_memory << 20)
    if data_path:
        dataset = Dataset(data_path, loaded.manifest["inputs"][n_state:],
                          loaded.layout["data_names"], run_record["seed"], **read)
    eval_data = None
    if eval_path:
        if loaded.evaluator is None:
            raise CliError(f"{directory} holds no evaluation program (its objective could not "
                           "be exported for any batch size, or an older luxc compiled it); "
                           "recompile it to use --eval-data")
        # The evaluation program's batch axis is symbolic: any number of samples >= 1.
        eval_data = Dataset(eval_path, loaded.manifest["inputs"][n_state:],
                            loaded.layout["data_names"], evaluation=True, **read).arrays()
    total = steps or (epochs * dataset.batches_per_epoch if epochs else
                      dataset.batches_per_epoch if dataset and dataset.samples > dataset.batch_size
                      else 10)
    end = run_record["origin"] + total
    if end > _MAX_STEPS:
        raise CliError(f"the run would end at step {end}; luxc counts steps up to {_MAX_STEPS}: "
                       "give fewer --steps or --epochs")
    remaining = end - loaded.step_count
    if remaining <= 0:
        click.echo(f"nothing to do: the state is at step {loaded.step_count}, the run ends at "
                   f"step {end}")
        return
    # Lines and log rows at the same steps whether or not the run was resumed.
    first_step, every = loaded.step_count + 1, _every(every, total)
    checkpoint_every = checkpoint_every or max(1, math.ceil(total / 10))
    eval_every = eval_every or max(1, math.ceil(total / 10))
    curve = _Curve(keep=bool(plot))
    scales = [loaded.loss_scale]
    stat_names = loaded.layout.get("stat_names") or [
        f"stats[{i}]" for i in range(loaded.layout["n_stats"])]

    def line(step: int, loss: float, stats: list[float], echo=click.echo) -> None:
        curve.add(step, loss)
        visible = (step - run_record["origin"]) % every == 0 or step == end
        if log is not None and visible:
            log.write({"step": step, "loss": loss, **dict(zip(stat_names, stats))})
        if not quiet and visible:
            echo(f"step {step}  loss {loss:.6g}")
        if scales[0] is not None and not quiet and loaded.loss_scale != scales[-1]:
            scales.append(loaded.loss_scale)  # float16 training: its loss scale changed
            echo(f"step {step}  loss scale {scales[-2]:g} -> {scales[-1]:g}")

    def evaluate(step: int) -> None:
        loss, stats = loaded.evaluate(eval_data, stop=lambda: interrupt.requested, time_limit=(
            None if deadline is None else max(1e-3, deadline - time.monotonic())))
        if log is not None:
            log.write({"step": step, "loss": loss, **dict(zip(stat_names, stats)), "eval": True})
        if not quiet:
            click.echo(f"eval step {step}  loss {loss:.6g}" + "".join(
                f"  {escaped(name, 200)} {value:.6g}" for name, value in zip(stat_names, stats)))

    def batches(i: int):
        return dataset.batch(start_index + i)

    def save(path) -> None:
        if log is not None:  # the rows up to this state on disk first, their record in it
            run_record["log"] = log.sync()
        loaded.save_state(path, run_record)

    def stopping() -> bool:
        return interrupt.requested or log is not None and log.error is not None

    for n in (checkpoint_every, remaining % checkpoint_every or checkpoint_every):
        loaded.prepare(steps_per_call, n, stacked=dataset is not None)
    if interrupt.requested:  # while loading or compiling: nothing written yet
        click.echo("interrupted before the first step; nothing was written", err=True)
        sys.exit(130)
    if checkpoint_dir:
        checkpoints.claim(checkpoint_dir, found, run_record["run_id"], loaded.step_count + 1, end)
    log = RunLog.open(log_path, run_record.get("log") if resumed_from else None, resume) \
        if log_path else None
    t0 = time.perf_counter()
    deadline = None if time_limit is None else time.monotonic() + time_limit
    stuck = None  # a stranger's call still running after Ctrl-C: luxc stopped waiting for it
    saved = None  # the step of this run's newest checkpoint
    try:
        with interrupt:
            if not loaded.signed_by_this_user:  # said once Ctrl-C is luxc's to handle
                click.echo("note: training with an artefact you did not sign; Ctrl-C stops it",
                           err=True)
            while loaded.step_count < end and not stopping():
                start_index = loaded.step_count - run_record["origin"]
                # Segments end on multiples of --checkpoint-every and --eval-every: a resumed
                # run saves and evaluates where an uninterrupted one does.
                n = min(end, *((loaded.step_count // k + 1) * k
                               for k in (checkpoint_every, eval_every))) - loaded.step_count
                try:
                    _train(loaded, n, dataset and batches, line, steps_per_call, quiet,
                           stopping, deadline)
                    if eval_data is not None and not stopping() and (
                            loaded.step_count % eval_every == 0 or loaded.step_count == end):
                        evaluate(loaded.step_count)  # before the checkpoint: a resume logs it
                except StepInterrupted as e:  # the state is the last finished step's
                    stuck, interrupt.requested = e, True
                if checkpoint_dir and (loaded.step_count % checkpoint_every == 0 or
                                       loaded.step_count == end or stopping()):
                    checkpoints.save(checkpoint_dir, loaded.step_count, keep,
                                     run_record["run_id"], save)
                    saved = loaded.step_count
            if checkpoint_dir and stopping() and saved != loaded.step_count:
                # Stopped before its first call: the state is still saved where it says.
                checkpoints.save(checkpoint_dir, loaded.step_count, keep, run_record["run_id"],
                                 save)
    finally:  # rows already written reach the file, however the run ends
        if log is not None:
            log.close()
    seconds = time.perf_counter() - t0
    ran = loaded.step_count - first_step + 1
    if resumed_from is not None:
        click.echo(f"resumed from {resumed_from} (step {first_step - 1})")
    click.echo(f"ran {ran} steps ({first_step}-{loaded.step_count}) in {seconds:.3f} s, "
               f"{ran / seconds:.1f} steps/s" + ("" if curve.first is None else
                                                f"; loss {curve.first:.6g} -> {curve.last:.6g}"))
    click.echo(f"executable: {loaded.executable_source} (loaded in {load_seconds:.2f} s)")
    if plot and curve.points:
        _plot(curve.points, plot, f"luxc run {directory}")
        click.echo(f"wrote the loss curve to {plot}")
    if save_state:
        save(save_state)
        click.echo(f"saved the state at step {loaded.step_count} to {save_state}")
    if log is not None and log.error is not None:
        where = checkpoint_dir or save_state
        raise CliError(log.failure() + f"; training stopped at step {loaded.step_count}" +
                       (f", the state is in {where}" if where else ""))
    if interrupt.requested:
        where = checkpoint_dir or save_state
        click.echo(f"interrupted at step {loaded.step_count}" +
                   (f" ({GRACE_SECONDS:.0f} s after Ctrl-C, luxc stopped waiting for the "
                    "artefact's computation)" if stuck else "") +
                   (f"; the state is in {where}" if where else ""), err=True)
        sys.exit(130)


def _train(loaded, n, batches, line, steps_per_call, quiet, stop, deadline) -> None:
    kwargs = dict(batches=batches, stop=stop, keep_losses=False,
                  steps_per_call=min(steps_per_call, n),
                  time_limit=None if deadline is None else max(1e-3, deadline - time.monotonic()))
    if not quiet and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("training", total=n)
            # On one terminal the lines go above the bar; redirected, stdout gets them plain.
            echo = (lambda text: progress.console.print(text, highlight=False, markup=False)) \
                if sys.stdout.isatty() else click.echo

            def report(step: int, loss: float, stats: list[float]) -> None:
                line(step, loss, stats, echo)
                progress.advance(task)

            loaded.run(n, on_stats=report, **kwargs)
    else:
        loaded.run(n, on_stats=line, **kwargs)
