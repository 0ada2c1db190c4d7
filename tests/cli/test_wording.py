"""Runtime errors speak Python (the argument a caller passes); ``luxc``'s messages name the flag
its user typed instead (luxc/cli/_wording.py). Each case: the runtime's error, then the same
error as the CLI prints it."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from luxc.cli import main
from luxc.cli._wording import cli_words
from luxc.runtime.artifacts._artifact import check_output
from luxc.runtime.artifacts._manifest import ArraySpec
from luxc.runtime.artifacts._mesh import needed_devices
from luxc.runtime.data._dataset import Dataset
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.trust._module_check import check_untrusted
from tests.trust._artifacts import exported_with_custom_call as _exported_with_custom_call

ROOT = Path(__file__).resolve().parents[1]
# A command-line flag (XLA's own flags, --xla_..., are what the user sets in XLA_FLAGS).
FLAG = re.compile(r"(?<![\w-])--(?!xla_)[a-z]")
SPECS = [ArraySpec((8, 3), "float32"), ArraySpec((8, 1), "float32")]
NAMES = ["data[0]", "data[1]"]


def _raised_strings(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield part.lineno, part.value


def test_no_error_raised_outside_the_cli_names_a_command_line_flag():
    files = [p for d in ("runtime", "passes", "luxc") for p in (ROOT / d).rglob("*.py")
             if ROOT / "luxc" / "cli" not in p.parents]
    found = [f"{p.relative_to(ROOT)}:{line}: {text!r}" for p in files
             for line, text in _raised_strings(p) if FLAG.search(text)]
    assert not found, "\n".join(found)


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(ArtifactError) as e:
        call(*args, **kwargs)
    return " ".join(str(e.value).split())


def _outs(tmp: Path) -> dict[str, tuple[Path, bool, str, str]]:
    """Each refused ``out``: (out, force, the runtime's message, the CLI's)."""
    (tmp / "notes.txt").write_text("mine")
    dots, parent = tmp / "..", tmp / "notes.txt"
    return {
        "no name": (dots, False, f"out={str(dots)!r} names no new directory; give the artifact a "
                    "directory name, e.g. out='step.luxc'", f"--out {str(dots)!r} names no new "
                    "directory; give the artifact a directory name, e.g. --out step.luxc"),
        "exists": (tmp, False, f"{tmp} already exists; choose another out, or pass force=True "
                   "to replace the artifact there", f"{tmp} already exists; choose another "
                   "--out, or pass --force to replace the artifact there"),
        "not an artifact": (tmp, True, f"{tmp} is not a luxc artifact (it also holds notes.txt); "
                            "luxc replaces only directories it wrote, so choose another out",
                            f"{tmp} is not a luxc artifact (it also holds notes.txt); luxc "
                            "replaces only directories it wrote, so choose another --out"),
        "parent is a file": (parent / "step.luxc", False, f"out's parent directory {parent} "
                             "exists and is not a directory", f"--out parent {parent} exists "
                             "and is not a directory"),
    }


@pytest.mark.parametrize("case", ["no name", "exists", "not an artifact", "parent is a file"])
def test_a_refused_out_names_out_and_force(tmp_path, case):
    out, force, python, cli = _outs(tmp_path)[case]
    message = _error(check_output, out, force)
    assert message == python
    assert cli_words(message) == cli


def test_a_sharded_artifact_on_too_few_devices():
    message = _error(needed_devices, {"data": 4096})
    assert "(mesh data=4096)" in message and message.endswith("compile it again without a mesh")
    shown = cli_words(message)
    assert "(--mesh data=4096)" in shown and shown.endswith("compile it again without --mesh")
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4096" in shown


def _data_directory(path: Path) -> Path:
    path.mkdir()
    np.save(path / "0.npy", np.zeros((16, 3), np.float32))
    np.save(path / "1.npy", np.zeros((16, 1), np.float32))
    return path


def test_a_symlink_in_a_data_directory(tmp_path):
    d = _data_directory(tmp_path / "d")
    (d / "1.npy").rename(tmp_path / "y.npy")
    (d / "1.npy").symlink_to(tmp_path / "y.npy")
    message = _error(Dataset, d, SPECS, NAMES)
    assert "unless asked (follow_symlinks=True: only if you trust where it points)" in message
    assert "unless asked (--follow-symlinks: only if you trust" in cli_words(message)


def test_a_dataset_over_the_memory_limit(tmp_path):
    message = _error(Dataset, _data_directory(tmp_path / "d"), SPECS, NAMES, max_memory=64)
    assert "raise the limit (max_memory=, in bytes) if you trust it" in message
    assert "raise the limit (--max-data-memory MiB) if you trust it" in cli_words(message)


def test_device_kernels_in_a_strangers_module():
    message = _error(check_untrusted, _exported_with_custom_call("tpu_custom_call"), "art")
    assert message.endswith("if you trust its author, pass allow_device_kernels=True to luxc.load")
    assert cli_words(message).endswith("if you trust its author, pass --allow-device-kernels "
                                       "(luxc.load(..., allow_device_kernels=True))")


def test_the_cli_prints_the_flag_a_runtime_error_names_as_an_argument(tmp_path):
    d = _data_directory(tmp_path / "d")
    r = CliRunner().invoke(main, ["compile", "no.module:factory", "--out", str(d)])
    assert r.exit_code != 0
    assert r.output.strip().splitlines()[-1] == (f"Error: {d} already exists; choose another "
                                                 "--out, or pass --force to replace the "
                                                 "artifact there")


def test_a_native_kernel_called_with_shapes_jax_never_emits():
    from jaxlib.mlir import ir

    from luxc.runtime._jax_internal import ir_context
    from luxc.runtime.trust._native_calls import NativeCallCheck, check_module

    text = """module @m { func.func public @main(%arg0: tensor<3xf32>) -> tensor<3xf32> {
        %0 = stablehlo.custom_call @lapack_sgetrf_ffi(%arg0) : (tensor<3xf32>) -> tensor<3xf32>
        return %0 : tensor<3xf32> } }"""
    with ir_context():
        message = _error(check_module, ir.Module.parse(text), NativeCallCheck("art"))
    assert message.endswith("or pass allow_unchecked_native_calls=True if you trust its author")
    assert cli_words(message).endswith("or pass --allow-unchecked-native-calls if you trust its "
                                       "author")
