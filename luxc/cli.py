"""The ``luxc`` command: compile, inspect, run and profile training steps; list passes; demo.

Every failure ends with one line on stderr and a non-zero exit code (set ``LUXC_DEBUG=1`` for
the traceback).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


class CliError(click.ClickException):
    def format_message(self) -> str:
        return self.message


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the CLI's contract: one line, no traceback
            if os.environ.get("LUXC_DEBUG"):
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            raise CliError(f"{type(e).__name__}: {message}") from None


@click.group(cls=_Group)
@click.version_option(package_name="luxc")
def main() -> None:
    """luxc: Lux.jl's training utilities on JAX, with the step compiled ahead of time."""


def load_factory(spec: str) -> Callable[[], Any]:
    """``path/file.py:factory`` or ``module:factory`` → the factory function."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise CliError(f"bad SPEC {spec!r}: use path/file.py:factory or module:factory")
    if target.endswith(".py") or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise CliError(f"SPEC file not found: {path}")
        module_name = f"_luxc_spec_{abs(hash(path.resolve()))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001
            raise CliError(f"importing {path} failed: {type(e).__name__}: {e}") from None
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise CliError(f"cannot import module {target!r}: {e}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise CliError(f"{target} has no callable {name!r}")
    return factory


def call_factory(spec: str):
    import luxc

    factory = load_factory(spec)
    try:
        out = factory()
    except Exception as e:  # noqa: BLE001
        raise CliError(f"factory {spec} raised {type(e).__name__}: {e}") from None
    if not (isinstance(out, tuple) and len(out) == 3 and isinstance(out[2], luxc.TrainState)):
        raise CliError(f"factory {spec} must return (objective, data, train_state); received "
                       f"{type(out).__name__}")
    return out


def _options(passes: str, precision: str, xla_option: tuple[str, ...]):
    import luxc

    xla = {}
    for item in xla_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--xla-option takes NAME=VALUE; received {item!r}")
        xla[key] = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(xla[key], str):
            try:
                xla[key] = int(value)
            except ValueError:
                try:
                    xla[key] = float(value)
                except ValueError:
                    pass
    return luxc.CompileOptions(passes=passes, precision=precision, xla_options=xla)


_passes_option = click.option("--passes", default="default", show_default=True,
                              help="'default', 'none', 'all' or comma-separated pass names")
_precision_option = click.option("--precision", type=click.Choice(["default", "high", "highest"]),
                                 default="default", show_default=True)
_xla_option = click.option("--xla-option", multiple=True, metavar="NAME=VALUE",
                           help="an XLA option for this executable (repeatable)")


@main.command()
@click.argument("spec")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="artefact directory to write")
@click.option("--platform", "platforms", multiple=True,
              type=click.Choice(["cpu", "cuda", "rocm", "tpu"]),
              help="target platform (repeatable; default: this machine's)")
@_passes_option
@_precision_option
@_xla_option
@click.option("--force", is_flag=True, help="replace an existing artefact directory")
def compile(spec, out, platforms, passes, precision, xla_option, force):
    """Compile the step of SPEC (path/file.py:factory or module:factory) into DIR."""
    import luxc

    obj, data, ts = call_factory(spec)
    manifest = luxc.export_step(obj, data, ts, out, platforms=list(platforms) or None,
                                compile_options=_options(passes, precision, xla_option),
                                force=force)
    rewrites = ", ".join(f"{r['name']}: {r['rewrites']}" for r in manifest["pass_report"]) or "none"
    click.echo(f"wrote {out}: platforms {', '.join(manifest['platforms'])}; passes {rewrites}; "
               f"compile {manifest['compile_seconds'] or 0:.2f}s")


def _format_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@main.command()
@click.argument("directory", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
def inspect(directory, as_json):
    """Show an artefact's manifest, pass report, FLOPs and memory."""
    from luxc.runtime import artifact

    manifest = artifact.read_manifest(directory)
    artifact.verify(directory, manifest)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    layout = manifest["layout"]
    v = manifest["versions"]
    click.echo(f"artefact    {directory}  (format {manifest['format_version']}, created "
               f"{manifest['created']})")
    click.echo(f"built with  luxc {v['luxc']}, jax {v['jax']}, jaxlib {v['jaxlib']}")
    click.echo(f"model       {layout['model']} at step {layout['step']}")
    click.echo(f"platforms   {', '.join(manifest['platforms'])}; executable for "
               f"{manifest['executable_platform'] or 'none'}")
    click.echo(f"inputs      {layout['n_state']} state arrays, {layout['n_data']} data arrays")
    for name, spec in zip(layout["data_names"], manifest["inputs"][layout["n_state"]:]):
        click.echo(f"            {name}: {spec['dtype']}{spec['shape']}")
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
        click.echo(f"memory      arguments {_format_bytes(mem.get('argument_size_in_bytes'))}, "
                   f"outputs {_format_bytes(mem.get('output_size_in_bytes'))}, temporaries "
                   f"{_format_bytes(mem.get('temp_size_in_bytes'))}, peak "
                   f"{_format_bytes(_peak_bytes(mem))}")
    click.echo("files       " + ", ".join(sorted(manifest["files"])))


def _load_artifact(directory: str):
    import warnings

    from luxc.runtime import artifact

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = artifact.load(directory)
    for note in loaded.notes:
        click.echo(f"note: {note}", err=True)
    return loaded


def _read_npz(path: str) -> list:
    import numpy as np

    if not Path(path).is_file():
        raise CliError(f"data file not found: {path}")
    try:
        with np.load(path) as f:
            return [f[k] for k in f.files]
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read {path} as .npz: {e}") from None


@main.command()
@click.argument("directory", type=click.Path())
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--data", "data_path", type=click.Path(), help=".npz with the data arrays, in order")
@click.option("--save-state", type=click.Path(dir_okay=False), help="write the final state here")
def run(directory, steps, data_path, save_state):
    """Train STEPS steps with the artefact in DIRECTORY (no model source needed)."""
    loaded = _load_artifact(directory)
    data = loaded.check_data(_read_npz(data_path)) if data_path else None
    if steps >= 100 and sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("training", total=steps)

            def report(step: int, loss: float) -> None:
                progress.console.print(f"step {step}  loss {loss:.6g}")
                progress.advance(task)

            loaded.run(steps, data, on_step=report)
    else:
        loaded.run(steps, data, on_step=lambda s, loss: click.echo(f"step {s}  loss {loss:.6g}"))
    if save_state:
        loaded.save_state(save_state)
        click.echo(f"saved the state at step {loaded.step_count} to {save_state}")


def _peak_bytes(mem: dict | None) -> int | None:
    # XLA:CPU's peak_memory_in_bytes leaves out temporaries; bound it from the buffer sizes.
    if not mem:
        return None
    total = (mem.get("argument_size_in_bytes", 0) + mem.get("output_size_in_bytes", 0)
             - mem.get("alias_size_in_bytes", 0) + mem.get("temp_size_in_bytes", 0))
    return max(total, mem.get("peak_memory_in_bytes", 0))


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _profile_spec(spec, steps, options, trace):
    import tempfile

    import jax

    import luxc
    from luxc.runtime import persistent_cache

    obj, data, ts = call_factory(spec)
    with tempfile.TemporaryDirectory(prefix="luxc-profile-cache-") as cache_dir:
        persistent_cache.enable(cache_dir)
        t0 = time.perf_counter()
        cs = luxc.compile_step(obj, data, ts, compile_options=options, donate=True)
        cold = time.perf_counter() - t0
        jax.clear_caches()
        ts_warm = ts.replace(cache=luxc.runtime.ExecutableCache())
        t0 = time.perf_counter()
        luxc.compile_step(obj, data, ts_warm, compile_options=options, donate=True)
        warm = time.perf_counter() - t0
        persistent_cache.disable()
    times = []

    def one(ts):
        t = time.perf_counter()
        _, _, _, ts = cs(ts, data, sync=True)
        times.append(time.perf_counter() - t)
        return ts

    ts = one(ts)  # the first call also allocates: not a step time
    times.clear()
    if trace:
        with jax.profiler.trace(trace):
            for _ in range(steps):
                ts = one(ts)
    else:
        for _ in range(steps):
            ts = one(ts)
    return cold, warm, times, cs.cost_analysis(), cs.memory_stats()


def _profile_dir(directory, steps, trace):
    import jax

    t0 = time.perf_counter()
    loaded = _load_artifact(directory)
    cold = time.perf_counter() - t0
    state, data, times = loaded.state, loaded.data, []
    state, _, _ = loaded(state, data)
    jax.block_until_ready(state)
    ctx = jax.profiler.trace(trace) if trace else None
    if ctx:
        ctx.__enter__()
    try:
        for _ in range(steps):
            t = time.perf_counter()
            state, loss, _ = loaded(state, data)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t)
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
    return cold, None, times, loaded.cost_analysis(), loaded.memory_stats()


@main.command()
@click.argument("target")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--trace", type=click.Path(file_okay=False), help="write a jax profiler trace here")
@_passes_option
@_precision_option
@_xla_option
def profile(target, steps, trace, passes, precision, xla_option):
    """Time the step of TARGET (a SPEC or an artefact directory) with sync=True."""
    if Path(target).is_dir():
        cold, warm, times, cost, mem = _profile_dir(target, steps, trace)
        what = "load + compile"
    else:
        cold, warm, times, cost, mem = _profile_spec(target, steps,
                                                     _options(passes, precision, xla_option), trace)
        what = "compile"
    median, p95 = statistics.median(times), _percentile(times, 0.95)
    click.echo(f"{what:<14} {cold:8.3f} s cold" + (f", {warm:.3f} s warm (persistent cache)"
                                                   if warm is not None else ""))
    click.echo(f"{'step time':<14} {median * 1e3:8.3f} ms median, {p95 * 1e3:.3f} ms p95 "
               f"({len(times)} steps, sync=True)")
    click.echo(f"{'throughput':<14} {1 / median:8.1f} steps/s")
    click.echo(f"{'peak memory':<14} {_format_bytes(_peak_bytes(mem)):>8} "
               "(XLA buffers: arguments + outputs - aliased + temporaries)")
    flops = (cost or {}).get("flops")
    if flops:
        click.echo(f"{'achieved':<14} {flops / median / 1e9:8.2f} GFLOP/s "
                   f"({flops / 1e6:.1f} MFLOP per step)")
    if trace:
        click.echo(f"{'trace':<14} {trace} (open with Perfetto or TensorBoard)")


@main.command(name="passes")
def list_passes():
    """List luxc's StableHLO passes and each platform's default pipeline."""
    from luxc import passes

    for name, description in passes.available().items():
        click.echo(f"{name:<24} {description}")
    for platform in ("cpu", "cuda", "tpu"):
        click.echo(f"default on {platform:<5} {', '.join(passes.default_pipeline(platform)) or '(none)'}")


@main.command()
@click.option("--steps", default=400, show_default=True, type=click.IntRange(min=1))
def demo(steps):
    """Train the seed's regression example with the compiled step (AutoXLA)."""
    from luxc._demo import run_demo

    run_demo(steps, click.echo)


if __name__ == "__main__":
    main()
