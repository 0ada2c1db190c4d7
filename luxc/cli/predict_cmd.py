"""``luxc predict``: run an artifact's forward pass (the trained model) without its source."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click

from luxc.cli import run_outputs as outputs
from luxc.cli._common import CliError, unchecked_native_calls_option
from luxc.runtime.messages._shown import shown


def _check_out(path: str, directory: str) -> None:
    """``--out``: a ``.npy`` name outside the artifact; an existing file is replaced only when
    it is a ``.npy`` array already (luxc never overwrites anything else)."""
    from luxc.runtime.files._atomic_write import check_writable_file

    if Path(path).suffix.lower() != ".npy":
        raise CliError(f"--out {path}: luxc writes the predictions as a .npy array; give a .npy "
                       "name")
    outputs.check_outside(path, directory, "--out")
    check_writable_file(path, "--out")
    out = Path(path)
    if out.exists() and not out.is_file():  # a FIFO, a device: reading its magic would block
        raise CliError(f"--out {path} exists and is not a regular file (a FIFO, a device or a "
                       "socket); luxc writes the predictions to a .npy file: give a new name")
    if out.is_symlink() or out.exists() and not _is_npy(out):
        raise CliError(f"--out {path} exists and is not a .npy array; luxc does not overwrite "
                       "it: remove it yourself or choose another name")


def _check_not_input(out_path: str, input_path: str) -> None:
    """``--out`` must not be the ``--input`` file, by name, link or hard link (it would replace
    the user's inputs with the outputs)."""
    out, given = Path(out_path), Path(input_path)
    try:  # a link loop is not the same file: reading it is refused later, in one line
        same = out.absolute().resolve() == given.absolute().resolve()
    except (OSError, RuntimeError):
        same = False
    try:
        same = same or os.path.samefile(out, given)
    except OSError:  # one of them does not exist, or is a loop
        pass
    if same:
        raise CliError(f"--out {out_path} is the --input file {input_path}; luxc does not write "
                       "over its input: give --out another name")


def _is_npy(path: Path) -> bool:
    try:  # never blocks: a FIFO or a device put there since the check is not read
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 6) == b"\x93NUMPY"
    except OSError:
        return False
    finally:
        os.close(fd)


@click.command()
@click.argument("directory", type=click.Path())
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="a .npy array of inputs, batch-first: any number of samples of the shape "
                   "and dtype the model takes (`luxc inspect` shows data[0])")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="write the model's outputs here as a .npy array")
@click.option("--state", "state_path", type=click.Path(dir_okay=False),
              help="use the parameters and model state of this checkpoint (written by luxc run "
                   "--save-state/--checkpoint or luxc.save_state); default: the artifact's own")
@click.option("--batch-size", type=click.IntRange(min=1, max=1 << 24),
              help="run the model on this many samples at a time, writing each batch's outputs "
                   "as it goes (default: about 64 MiB of inputs and outputs a batch)")
@click.option("--allow-device-kernels", is_flag=True, help="run compiled GPU/TPU kernels (Mosaic, "
              "Pallas) in an artifact you did not sign: only if you trust its author")
@unchecked_native_calls_option
def predict(directory, input_path, out_path, state_path, batch_size, allow_device_kernels,
            allow_unchecked_native_calls):
    """Run the model of the artifact in DIRECTORY on --input, in test mode (BatchNorm uses its
    running statistics, Dropout is the identity), and write its output to --out."""
    from luxc.runtime.artifacts._artifact import load_predictor
    from luxc.runtime.artifacts._forward import default_batch_size, predict_batches, read_input
    from luxc.runtime.data._npy_rows import npy_chunks
    from luxc.runtime.files._atomic_write import write_atomic

    _check_not_input(out_path, input_path)  # before any work: a refusal loses nothing
    _check_out(out_path, directory)
    predictor = load_predictor(directory, allow_device_kernels=allow_device_kernels,
                               allow_unchecked_native_calls=allow_unchecked_native_calls)
    if predictor.forward.exported.out_avals and len(predictor.forward.exported.out_avals) != 1:
        raise CliError(f"the model of {directory} returns "
                       f"{len(predictor.forward.exported.out_avals)} arrays; --out holds one: use "
                       "luxc.load(DIR).predict(x) in Python")
    if state_path:
        predictor.load_state(state_path)
    x = read_input(input_path, predictor.forward, f"x (--input {shown(input_path)})")
    if not predictor.forward.signed_by_this_user:  # said once Ctrl-C can stop it
        click.echo("note: running the model of an artifact you did not sign; Ctrl-C stops it",
                   err=True)
    batch_size = batch_size or default_batch_size(predictor.forward)
    shapes = []

    def batches():
        for y in predict_batches(predictor.forward, predictor.state, x, batch_size):
            shapes.append((y.shape, y.dtype))
            yield y

    write_atomic(out_path, npy_chunks(len(x), batches(), f"--out {out_path}"))
    source = f"checkpoint {state_path}, step {predictor.step_count}" if state_path else \
        f"the artifact's state, step {predictor.step_count}"
    (shape, dtype) = shapes[0]
    click.echo(f"wrote {dtype}{[len(x), *shape[1:]]} to {out_path} ({len(x)} samples in "
               f"{len(shapes)} batch{'es' if len(shapes) > 1 else ''} of up to {batch_size}; "
               f"parameters from {source})")
