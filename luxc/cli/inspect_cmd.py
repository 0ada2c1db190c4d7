"""``luxc inspect``: what an artifact holds.

Only the manifest (and its signature) is read: every listed file is checked to be a regular file
of the listed size within what the manifest's shapes allow, and its hash is checked by
``--verify`` (read in chunks) or when ``luxc run``/``luxc.load`` reads it. Every string from the
manifest is printed escaped (:mod:`luxc.runtime.messages._shown`): it cannot forge a line or drive the
terminal.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from luxc.cli._common import format_bytes, peak_bytes

if TYPE_CHECKING:
    from luxc.runtime.artifacts import Manifest


@click.command()
@click.argument("directory", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
@click.option("--verify", is_flag=True, help="also check every file's SHA-256 (reads them all)")
def inspect(directory, as_json, verify):
    """Show an artifact's manifest, pass report, FLOPs and memory."""
    from pathlib import Path

    from luxc.runtime.artifacts._format import check_files, other_entries, read_manifest
    from luxc.runtime.messages._shown import shown, shown_lines

    manifest, signed, unsigned_reason = read_manifest(directory)
    check_files(directory, manifest, hashes=verify)
    if as_json:  # json.dumps escapes every control character
        click.echo(json.dumps(manifest.to_json(), indent=2, sort_keys=True))
        return
    layout, v = manifest.layout, manifest.versions
    click.echo(f"artifact    {directory}  (format {manifest.format_version}, created "
               f"{shown(manifest.created, 80)})")
    click.echo(f"built with  luxc {shown(v['luxc'], 80)}, jax {shown(v['jax'], 80)}, jaxlib "
               f"{shown(v['jaxlib'], 80)}")
    summary = layout.model_summary
    lines = shown_lines(summary) if summary is not None else [shown(layout.model)]
    click.echo(f"model       {lines[0]}")
    for line in lines[1:]:
        click.echo(f"            {line}")
    click.echo(f"            at step {layout.step}")
    for key, text in (("objective", layout.objective), ("optimizer", layout.optimizer)):
        click.echo(f"{key:<12}{shown('(not recorded by this luxc version)' if text is None else text)}")
    click.echo(f"platforms   {shown(', '.join(manifest.platforms), 200)}; executable for "
               f"{shown(manifest.executable_platform or 'none', 80)}")
    click.echo(f"inputs      {layout.n_state} state arrays, {layout.n_data} data arrays")
    _echo_inputs(manifest)
    options = manifest.compile_options
    passes = options.passes if isinstance(options.passes, str) else list(options.passes)
    click.echo(f"options     passes={shown(passes, 400)} precision="
               f"{shown(options.precision, 40)} xla={shown(options.xla_options or '{}', 400)}")
    tuned = _autotune_line(manifest.autotune)
    if tuned:
        click.echo(f"autotune    {tuned}")
    click.echo("passes      " + ("; ".join(
        f"{shown(r.name, 80)}: {r.rewrites} rewrites, {r.ops_before} -> {r.ops_after} ops"
        for r in manifest.pass_report) or "none"))
    if manifest.flops is not None:
        click.echo(f"flops       {manifest.flops:.4g} per step")
    mem = manifest.memory or {}
    if mem:
        click.echo(f"memory      arguments {format_bytes(mem.get('argument_size_in_bytes'))}, "
                   f"outputs {format_bytes(mem.get('output_size_in_bytes'))}, temporaries "
                   f"{format_bytes(mem.get('temp_size_in_bytes'))}, peak "
                   f"{format_bytes(peak_bytes(mem))}")
    click.echo("files       " + ", ".join(sorted(manifest.files)) + (
        "; hashes verified" if verify else
        "; sizes checked, hashes not read (luxc run checks them; --verify checks them now)"))
    others = other_entries(Path(directory))
    if others:
        click.echo(f"not listed  {', '.join(others[:20])}{' …' if len(others) > 20 else ''}: not "
                   "part of the artifact; luxc never reads or runs them")
    click.echo("signed      " + ("by this user's luxc key: its executable will be loaded"
                                 if signed else
                                 f"no: {unsigned_reason}; luxc will compile its "
                                 "StableHLO instead of loading its executable"))


def _echo_inputs(manifest: Manifest) -> None:
    """The data inputs (with a mesh: every input, with its partition spec over the mesh)."""
    from luxc.runtime.artifacts._manifest import describe
    from luxc.runtime.messages._shown import shown

    layout, mesh = manifest.layout, manifest.mesh
    if mesh is not None:  # every input, with its partition spec over the mesh
        click.echo(f"mesh        {shown(', '.join(f'{k}={v}' for k, v in mesh.items()), 200)}")
        rows = zip(layout.state_names + layout.data_names, manifest.inputs)
    else:
        rows = zip(layout.data_names, manifest.data_inputs)
    for name, spec in rows:
        sharding = "" if mesh is None else \
            f" {shown('P()' if spec.sharding is None else spec.sharding, 200)}"
        click.echo(f"            {shown(name, 200)}: {describe(spec)}{sharding}")


def _autotune_line(record: object) -> str | None:
    """The manifest's autotune record as one line (kept candidate, then each candidate's time);
    a record this luxc cannot read is said to be so, not trusted (the manifest is data)."""
    from luxc.runtime.messages._shown import shown

    if record is None:
        return None
    try:
        times = ", ".join(f"{shown(c['name'], 40)} {float(c['median_seconds']) * 1e3:.3f} ms"
                          for c in record["candidates"])
        return f"kept {shown(record['chosen'], 40)} of {times} (median per step, timed at compile)"
    except (KeyError, TypeError, ValueError):
        return "present but unreadable by this luxc (see --json)"
