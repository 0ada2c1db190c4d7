"""``luxc passes`` and ``luxc demo``."""

from __future__ import annotations

import click


@click.command(name="passes")
def list_passes():
    """List luxc's StableHLO passes and each platform's default pipeline."""
    from luxc import passes

    for name, description in passes.available().items():
        click.echo(f"{name:<24} {description}")
    for platform in ("cpu", "cuda", "tpu"):
        click.echo(f"default on {platform:<5} {', '.join(passes.default_pipeline(platform)) or '(none)'}")


@click.command()
@click.option("--steps", default=400, show_default=True, type=click.IntRange(min=1))
def demo(steps):
    """Train an MLP on y = 2x - x³ with AutoXLA.

    The regression example of Lux.jl's training documentation (examples/regression.py): prints
    the model, the pass report, compile and step times and the loss curve.
    """
    from luxc._demo import run_demo

    run_demo(steps, click.echo)

