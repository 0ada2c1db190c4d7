"""``luxc compile``: export a training step to an artifact directory."""

from __future__ import annotations

import click

from luxc.cli._common import (
    CliError,
    autotune_option,
    call_factory,
    compile_options,
    mixed_precision_option,
    passes_option,
    precision_option,
    xla_option,
)


@click.command()
@click.argument("spec")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="the artifact directory to write (a directory, created by luxc)")
@click.option("--platform", "platforms", multiple=True,
              type=click.Choice(["cpu", "cuda", "rocm", "tpu"]),
              help="target platform (repeatable; default: this machine's)")
@passes_option
@precision_option
@mixed_precision_option
@xla_option
@autotune_option
@click.option("--force", is_flag=True,
              help="replace an existing luxc artifact directory (never any other directory)")
@click.option("--mesh", metavar="AXIS=N", help="shard the step over N devices along mesh axis "
              "AXIS, the batch split along it (e.g. data=8)")
@click.option("--strategy", type=click.Choice(["data", "fsdp"]), default="data", show_default=True,
              help="with --mesh: replicate the state (data) or split it (fsdp)")
def compile(spec, out, platforms, passes, precision, mixed_precision, xla_option, autotune, force,
            mesh, strategy):
    """Compile the training step of SPEC into the artifact directory --out.

    SPEC is path/file.py:factory or module:factory. factory() takes no arguments and returns
    (objective, data, train_state): what luxc.training.single_train_step_ takes after the
    backend. --out becomes a directory holding the optimised StableHLO, the XLA executable for
    this machine, the initial state, the example data and a manifest; `luxc run` and
    `luxc inspect` take it. With --mesh, the step is sharded over that many devices.
    With --autotune, the step is timed on this machine under a few candidate configurations
    first; the fastest is written, and the manifest records every candidate's time.
    """
    import luxc
    from luxc.runtime.artifacts._artifact import check_output

    check_output(out, force)  # before the factory and the compile: refuse early, lose nothing
    device_mesh = _mesh(mesh) if mesh else None  # before the factory: refuse early
    obj, data, ts = call_factory(spec)
    if device_mesh is not None:
        data, ts = _sharded(device_mesh, strategy, data, ts)
    options = compile_options(passes, precision, xla_option, mixed_precision, autotune)
    manifest = luxc.export_step(obj, data, ts, out, platforms=list(platforms) or None,
                                compile_options=options, force=force)
    rewrites = ", ".join(f"{r.name}: {r.rewrites}" for r in manifest.pass_report) or "none"
    click.echo(f"wrote {out}: platforms {', '.join(manifest.platforms)}; passes {rewrites}; "
               f"compile {manifest.compile_seconds or 0:.2f}s"
               + (f"; autotune kept {manifest.autotune['chosen']}" if manifest.autotune
                  else ""))



def _mesh(mesh: str):
    import jax

    axis, sep, size = mesh.partition("=")
    if not (sep and axis.isidentifier() and size.isdigit() and int(size) > 0):
        raise CliError(f"--mesh takes AXIS=N (e.g. data=8); received {mesh!r}")
    n = int(size)
    if jax.device_count() < n:
        raise CliError(f"--mesh {mesh} needs {n} devices; this machine has {jax.device_count()} "
                       f"(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={n})")
    return jax.make_mesh((n,), (axis,), devices=jax.devices()[:n])


def _sharded(mesh, strategy: str, data, ts):
    import luxc

    axis = mesh.axis_names[0]
    return (luxc.distributed.shard_batch(data, mesh, axis=axis),
            luxc.distributed.shard(ts, mesh, strategy=strategy, axis=axis))
