"""``luxc run``: train with an artefact, without the model's source."""

from __future__ import annotations

import sys

import click

from luxc.cli._common import load_artifact, read_npz


@click.command()
@click.argument("directory", type=click.Path())
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--data", "data_path", type=click.Path(), help=".npz with the data arrays, in order")
@click.option("--save-state", type=click.Path(dir_okay=False), help="write the final state here")
@click.option("--steps-per-call", default=1, show_default=True, type=click.IntRange(min=1),
              help="run K steps in one compiled call (the losses still print per step)")
def run(directory, steps, data_path, save_state, steps_per_call):
    """Train STEPS steps with the artefact in DIRECTORY (no model source needed)."""
    if save_state:
        from luxc.runtime.files import check_writable_file

        check_writable_file(save_state, "--save-state")
    loaded = load_artifact(directory)
    data = loaded.check_data(read_npz(data_path)) if data_path else None
    if steps >= 100 and sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("training", total=steps)

            def report(step: int, loss: float) -> None:
                progress.console.print(f"step {step}  loss {loss:.6g}")
                progress.advance(task)

            loaded.run(steps, data, on_step=report, steps_per_call=steps_per_call)
    else:
        loaded.run(steps, data, on_step=lambda s, loss: click.echo(f"step {s}  loss {loss:.6g}"),
                   steps_per_call=steps_per_call)
    if save_state:
        loaded.save_state(save_state)
        click.echo(f"saved the state at step {loaded.step_count} to {save_state}")

