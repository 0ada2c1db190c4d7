"""``luxc compile``: export a training step to an artefact directory."""

from __future__ import annotations

import click

from luxc.cli._common import call_factory, compile_options, passes_option, precision_option, xla_option


@click.command()
@click.argument("spec")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="the artefact directory to write (a directory, created by luxc)")
@click.option("--platform", "platforms", multiple=True,
              type=click.Choice(["cpu", "cuda", "rocm", "tpu"]),
              help="target platform (repeatable; default: this machine's)")
@passes_option
@precision_option
@xla_option
@click.option("--force", is_flag=True,
              help="replace an existing luxc artefact directory (never any other directory)")
def compile(spec, out, platforms, passes, precision, xla_option, force):
    """Compile the training step of SPEC into the artefact directory --out.

    SPEC is path/file.py:factory or module:factory. factory() takes no arguments and returns
    (objective, data, train_state): what luxc.training.single_train_step_ takes after the
    backend. --out becomes a directory holding the optimised StableHLO, the XLA executable for
    this machine, the initial state, the example data and a manifest; `luxc run` and
    `luxc inspect` take it.
    """
    import luxc
    from luxc.runtime.artifact import check_output

    check_output(out, force)  # before the factory and the compile: refuse early, lose nothing
    obj, data, ts = call_factory(spec)
    manifest = luxc.export_step(obj, data, ts, out, platforms=list(platforms) or None,
                                compile_options=compile_options(passes, precision, xla_option),
                                force=force)
    rewrites = ", ".join(f"{r['name']}: {r['rewrites']}" for r in manifest["pass_report"]) or "none"
    click.echo(f"wrote {out}: platforms {', '.join(manifest['platforms'])}; passes {rewrites}; "
               f"compile {manifest['compile_seconds'] or 0:.2f}s")

