"""``luxc run``: train with an artefact, without the model's source."""

from __future__ import annotations

import math
import sys
import time

import click

from luxc.cli._common import CliError, load_artifact, read_npz


def _every(every: int | None, steps: int) -> int:
    # Every step of a short run; about ten lines of a long one.
    return every or (1 if steps <= 20 else math.ceil(steps / 10))


def _check_plot(path: str) -> None:
    from luxc.runtime.atomic_write import check_writable_file

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install matplotlib "
                       "(or pip install 'luxc[examples]')") from None
    check_writable_file(path, "--plot")


def _plot(losses: list[float], first_step: int, path: str, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(first_step, first_step + len(losses)), losses)
    ax.set(xlabel="step", ylabel="loss", title=title,
           yscale="log" if min(losses) > 0 else "linear")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


@click.command()
@click.argument("directory", type=click.Path())
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--data", "data_path", type=click.Path(),
              help="an .npz of the data arrays, in the order `luxc inspect` lists them "
                   "(data[0], data[1], ...: np.savez(F, x, y) keeps that order); default: the "
                   "example data stored in the artefact")
@click.option("--save-state", type=click.Path(dir_okay=False), help="write the final state here")
@click.option("--steps-per-call", default=1, show_default=True, type=click.IntRange(min=1),
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
def run(directory, steps, data_path, save_state, steps_per_call, every, quiet, plot, time_limit,
        allow_device_kernels):
    """Train STEPS steps with the artefact in DIRECTORY (no model source needed).

    Prints the loss every --every steps (a progress bar on a terminal), then a summary: steps,
    wall time, steps/s, first and last loss, and which executable ran (the artefact's
    serialized one, or one compiled from its portable StableHLO).
    """
    if save_state:
        from luxc.runtime.atomic_write import check_writable_file

        check_writable_file(save_state, "--save-state")
    if plot:
        _check_plot(plot)
    t0 = time.perf_counter()
    loaded = load_artifact(directory, allow_device_kernels=allow_device_kernels)
    load_seconds = time.perf_counter() - t0
    data = loaded.check_data(read_npz(data_path)) if data_path else None
    first_step, last_step, every = loaded.step_count + 1, loaded.step_count + steps, _every(every, steps)

    def line(step: int, loss: float, echo=click.echo) -> None:
        if not quiet and ((step - first_step + 1) % every == 0 or step == last_step):
            echo(f"step {step}  loss {loss:.6g}")

    t0 = time.perf_counter()
    if not quiet and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("training", total=steps)
            # On one terminal the lines go above the bar; redirected, stdout gets them plain.
            echo = (lambda text: progress.console.print(text, highlight=False, markup=False)) \
                if sys.stdout.isatty() else click.echo

            def report(step: int, loss: float) -> None:
                line(step, loss, echo)
                progress.advance(task)

            losses = loaded.run(steps, data, on_step=report, steps_per_call=steps_per_call,
                                time_limit=time_limit)
    else:
        losses = loaded.run(steps, data, on_step=line, steps_per_call=steps_per_call,
                            time_limit=time_limit)
    seconds = time.perf_counter() - t0
    click.echo(f"ran {steps} steps ({first_step}-{last_step}) in {seconds:.3f} s, "
               f"{steps / seconds:.1f} steps/s; loss {losses[0]:.6g} -> {losses[-1]:.6g}")
    click.echo(f"executable: {loaded.executable_source} (loaded in {load_seconds:.2f} s)")
    if plot:
        _plot(losses, first_step, plot, f"luxc run {directory}")
        click.echo(f"wrote the loss curve to {plot}")
    if save_state:
        loaded.save_state(save_state)
        click.echo(f"saved the state at step {loaded.step_count} to {save_state}")
