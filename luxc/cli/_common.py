"""What every ``luxc`` command shares: the command group, its one-line errors, SPEC loading
and the compile-option flags."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from luxc.cli._wording import cli_words
from luxc.runtime.performance._host_memory import retain_host_memory as _retain_host_memory
from luxc.runtime.trust._guarded_call import exit_now, exit_now_if_abandoned


class CliError(click.ClickException):
    """One line for the user; the runtime's Python words in it become the flags they typed."""

    def format_message(self) -> str:
        return cli_words(self.message)


class _Group(click.Group):
    _interrupted = False  # set when a command ended by Ctrl-C

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The `luxc` command itself (not CliRunner): a stranger's computation left running
        # must not reach Python's shutdown (runtime/trust/_guarded_call.py).
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as e:
            exit_now_if_abandoned(e.code)
            if self._interrupted:
                # After Ctrl-C a helper thread may still be inside native code; one that comes
                # back during Python's shutdown is unwound there and the process aborts (seen
                # once under `luxc profile --ops`: SIGABRT instead of 130). The command's own
                # `with` and `finally` blocks have run by now: nothing is left to close.
                exit_now(e.code)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code for it
            self._interrupted = True
            click.echo("luxc: interrupted (Ctrl-C)", err=True)
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:  # `luxc inspect … | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(1) from None
        except Exception as e:  # noqa: BLE001 - the CLI's contract: one line, no traceback
            if os.environ.get("LUXC_DEBUG"):
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            # luxc's own errors are written for the user: their message is the whole story. Any
            # other exception keeps its type, which is part of what it says.
            if not type(e).__module__.startswith("luxc."):
                message = f"{type(e).__name__}: {message}"
            raise CliError(message) from None


@click.group(cls=_Group)
@click.version_option(package_name="luxc")
@click.option("--retain-host-memory", is_flag=True,
              help="keep the host memory each step frees for the next one, in one malloc arena "
                   "(faster for steps with large temporaries; README 'Host memory')")
def main(retain_host_memory: bool) -> None:
    """luxc: Lux.jl's training utilities on JAX, with the step compiled ahead of time."""
    if retain_host_memory:
        # Before any command starts XLA's worker threads, so they share the one arena.
        result = _retain_host_memory(one_arena=True)
        if result.reason:  # not glibc, or heaps made before the call: say so, then go on
            click.echo(f"luxc: --retain-host-memory: {result.reason}", err=True)


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


def compile_options(passes: str, precision: str, xla_option: tuple[str, ...],
                    mixed_precision: str | None = None, autotune: bool = False):
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
    return luxc.CompileOptions(passes=passes, precision=precision, xla_options=xla,
                               mixed_precision=mixed_precision, autotune=autotune)


passes_option = click.option("--passes", default="default", show_default=True,
                              help="'default', 'none', 'all' or comma-separated pass names")
precision_option = click.option("--precision", type=click.Choice(["default", "high", "highest"]),
                                 default="default", show_default=True)
mixed_precision_option = click.option(
    "--mixed-precision", type=click.Choice(["bf16", "f16"]), default=None,
    help="compute in bfloat16 / float16 with float32 master weights (f16: dynamic loss scaling)")
xla_option = click.option("--xla-option", multiple=True, metavar="NAME=VALUE",
                           help="an XLA option for this executable (repeatable)")
autotune_option = click.option(
    "--autotune", is_flag=True,
    help="time a few candidate configurations of the step (passes, XLA options) and keep the "
         "fastest; the choice and the alternatives' times are recorded")



def format_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)



# A user's explicit trust in an artifact's author: its native calls are not checked.
unchecked_native_calls_option = click.option(
    "--allow-unchecked-native-calls", is_flag=True,
    help="in an artifact you did not sign, let native kernels (LAPACK, ...) run with whatever "
         "buffer shapes its StableHLO declares, unchecked: a wrong shape corrupts memory; only "
         "if you trust its author")


def load_artifact(directory: str, *, allow_device_kernels: bool = False,
                  allow_unchecked_native_calls: bool = False):
    import warnings

    from luxc.runtime.artifacts import _artifact as artifact

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = artifact.load(directory, allow_device_kernels=allow_device_kernels,
                               allow_unchecked_native_calls=allow_unchecked_native_calls)
    for note in loaded.notes:  # what a manifest adds to a note is escaped there
        click.echo(f"note: {note}", err=True)
    return loaded


def peak_bytes(mem: dict | None) -> int | None:
    # XLA:CPU's peak_memory_in_bytes leaves out temporaries; bound it from the buffer sizes.
    if not mem:
        return None
    total = (mem.get("argument_size_in_bytes", 0) + mem.get("output_size_in_bytes", 0)
             - mem.get("alias_size_in_bytes", 0) + mem.get("temp_size_in_bytes", 0))
    return max(total, mem.get("peak_memory_in_bytes", 0))

