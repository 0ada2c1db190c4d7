"""``luxc inspect``: what an artefact holds."""

from __future__ import annotations

import json

import click

from luxc.cli._common import format_bytes, peak_bytes


@click.command()
@click.argument("directory", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
def inspect(directory, as_json):
    """Show an artefact's manifest, pass report, FLOPs and memory."""
    from luxc.runtime.artifact_format import read_artifact

    artifact = read_artifact(directory)
    manifest = artifact.manifest
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    layout = manifest["layout"]
    v = manifest["versions"]
    click.echo(f"artefact    {directory}  (format {manifest['format_version']}, created "
               f"{manifest['created']})")
    click.echo(f"built with  luxc {v['luxc']}, jax {v['jax']}, jaxlib {v['jaxlib']}")
    click.echo(f"model       {layout['model']} at step {layout['step']}")
    click.echo(f"objective   {layout.get('objective', '(not recorded by this luxc version)')}")
    click.echo(f"optimizer   {layout.get('optimizer', '(not recorded by this luxc version)')}")
    click.echo(f"platforms   {', '.join(manifest['platforms'])}; executable for "
               f"{manifest['executable_platform'] or 'none'}")
    click.echo(f"inputs      {layout['n_state']} state arrays, {layout['n_data']} data arrays")
    mesh = manifest.get("mesh")
    sharded = isinstance(mesh, dict)
    if sharded:  # every input, with its partition spec over the mesh
        click.echo(f"mesh        {', '.join(f'{k}={v}' for k, v in mesh.items())}")
        rows = zip(layout["state_names"] + layout["data_names"], manifest["inputs"])
    else:
        rows = zip(layout["data_names"], manifest["inputs"][layout["n_state"]:])
    for name, spec in rows:
        sharding = f" {spec.get('sharding', 'P()')}" if sharded else ""
        click.echo(f"            {name}: {spec['dtype']}{spec['shape']}{sharding}")
    options = manifest["compile_options"]
    click.echo(f"options     passes={options['passes']} precision={options['precision']} "
               f"xla={options['xla_options'] or '{}'}")
    click.echo("passes      " + ("; ".join(
        f"{r['name']}: {r['rewrites']} rewrites, {r['ops_before']} -> {r['ops_after']} ops"
        for r in manifest["pass_report"]) or "none"))
    if manifest.get("flops") is not None:
        click.echo(f"flops       {manifest['flops']:.4g} per step")
    mem = manifest.get("memory") or {}
    if mem:
        click.echo(f"memory      arguments {format_bytes(mem.get('argument_size_in_bytes'))}, "
                   f"outputs {format_bytes(mem.get('output_size_in_bytes'))}, temporaries "
                   f"{format_bytes(mem.get('temp_size_in_bytes'))}, peak "
                   f"{format_bytes(peak_bytes(mem))}")
    click.echo("files       " + ", ".join(sorted(manifest["files"])))
    click.echo("signed      " + ("by this user's luxc key: its executable will be loaded"
                                 if artifact.signed_by_this_user else
                                 f"no: {artifact.unsigned_reason}; luxc will compile its "
                                 "StableHLO instead of loading its executable"))

