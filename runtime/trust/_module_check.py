"""Checking StableHLO that someone else wrote before this process touches it.

Parsing and compiling a module runs none of its author's code, but two things still reach
native code from it: a ``custom_call`` names a native function by string (a host callback, any
registered kernel) and calls it with the author's operands; and MLIR's deserializer is not
hardened against hostile bytes (fuzzed modules crashed it with heap corruption, or hung it). So
an artifact this user did not sign is first parsed and lowered in a child process, with a time
limit, and its custom calls are checked against the targets jax itself guarantees stable (minus
those that call back into a foreign runtime). A crash or a hang stays in the child and becomes
one ``ArtifactError``; only a module that passed is then loaded here.

The child is isolated from the files around it: ``python -I`` (no current directory, script
directory, ``PYTHON*`` variable or user ``site`` on its path, so a ``json.py`` or
``sitecustomize.py`` planted beside the artifact or in the working directory is never imported),
started in a private empty working directory, with the parent's own import path minus those
directories handed over explicitly so that luxc and jax import as they do in the parent.

Two custom-call targets that jax guarantees stable carry *compiled device code* in their
operands' attributes (``mosaic_gpu_v2``: a Mosaic GPU kernel, ``tpu_custom_call``: a Pallas/Mosaic
TPU kernel): from an unsigned module they run a stranger's kernel on a GPU or TPU, so they are
refused unless the user opts in (``luxc.load(..., allow_device_kernels=True)``,
``luxc run --allow-device-kernels``).

The child is :func:`_main`: one or more ``.jaxexport`` modules on standard input (an artifact's
are checked together, so jax is imported once), each module's custom-call targets as a line of
JSON on standard output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from luxc.runtime._jax_internal import stable_custom_call_targets
from luxc.runtime.artifacts._mesh import input_shardings
from luxc.runtime.compiling._module_ops import walk
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown

CHECK_SECONDS = 120
# Targets that hand control to another runtime's code are not data, whoever wrote them.
_NEVER = {"tf.call_tf_function"}
# Targets whose attributes carry a compiled kernel (device code someone else built).
DEVICE_KERNEL_TARGETS = frozenset({"mosaic_gpu_v2", "tpu_custom_call"})
_DEVICE_KERNEL_NAME = re.compile(r"mosaic|pallas|triton|tpu_custom_call", re.IGNORECASE)
# The child: the parent's import path comes as argv[1] (JSON), the mesh as argv[2], the sizes of
# the modules (concatenated on standard input) as argv[3].
_CHILD = ("import json, sys; sys.path[:0] = json.loads(sys.argv.pop(1)); "
          "from luxc.runtime.trust._module_check import _main; _main()")


def custom_call_targets(exported) -> set[str]:
    """The ``call_target_name`` of every ``stablehlo.custom_call`` in ``exported``'s module."""
    targets: set[str] = set()

    def visit(op) -> None:
        if op.name == "stablehlo.custom_call":
            targets.add(str(op.attributes["call_target_name"]).strip('"'))

    walk(exported.mlir_module_serialized, visit)
    return targets


def child_import_path(*untrusted: str | Path) -> list[str]:
    """This process's import path without the entries a stranger's files can be in: the current
    directory (``""``), the working directory and the ``untrusted`` directories."""
    avoid = {os.path.realpath(p) for p in (os.getcwd(), *untrusted)}
    return [p for p in sys.path if p and os.path.realpath(p) not in avoid]


def check_untrusted(jaxexport: bytes, what: str, timeout: float = CHECK_SECONDS, *,
                    mesh: dict[str, int] | None = None, directory: str | Path | None = None,
                    allow_device_kernels: bool = False) -> set[str]:
    """Parse, lower and check the custom calls of ``jaxexport`` in an isolated child process
    (see the module docstring); a sharded module is lowered on ``mesh`` (the manifest's, e.g.
    ``{"data": 8}``). ``directory`` (the artifact's) is kept off the child's import path;
    ``allow_device_kernels`` admits :data:`DEVICE_KERNEL_TARGETS`. Returns the module's
    custom-call targets (each on the allow-list): their shapes are checked where the module is
    compiled (:mod:`luxc.runtime.trust._native_calls`)."""
    return check_untrusted_modules({what: jaxexport}, timeout, mesh=mesh, directory=directory,
                                   allow_device_kernels=allow_device_kernels)[what]


def check_untrusted_modules(modules: Mapping[str, bytes], timeout: float = CHECK_SECONDS, *,
                            mesh: dict[str, int] | None = None,
                            directory: str | Path | None = None,
                            allow_device_kernels: bool = False) -> dict[str, set[str]]:
    """:func:`check_untrusted` for several modules (``what`` -> ``.jaxexport`` bytes, e.g. an
    artifact's step, forward pass and evaluation) in one child process, which imports jax once
    rather than once a module; each module has ``timeout`` seconds. Returns each module's
    custom-call targets; an error names the module that failed."""
    names, blobs = list(modules), [bytes(b) for b in modules.values()]
    path = child_import_path(*([directory] if directory is not None else []))
    argv = [sys.executable, "-I", "-W", "ignore", "-c", _CHILD, json.dumps(path),
            json.dumps(mesh), json.dumps([len(b) for b in blobs])]
    try:
        with tempfile.TemporaryDirectory(prefix="luxc-module-check-") as empty:
            child = subprocess.run(
                argv, input=b"".join(blobs), capture_output=True, timeout=timeout * len(blobs),
                cwd=empty, env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    except subprocess.TimeoutExpired as e:
        what = names[min(len(_lines(e.stdout)), len(names) - 1)]
        raise ArtifactError(f"{what}: checking its StableHLO did not finish in {timeout:.0f} s; "
                            "luxc refuses it") from None
    done = _lines(child.stdout)
    if child.returncode != 0 or len(done) != len(names):
        what = names[min(len(done), len(names) - 1)]
        how = (f"killed by signal {signal.Signals(-child.returncode).name}"
               if child.returncode < 0 else f"exit code {child.returncode}")
        last = (child.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
        raise ArtifactError(f"{what}: its StableHLO made the checking process fail ({how}"
                            f"{': ' + last[:200] if last else ''}); luxc refuses it")
    targets = {what: set(json.loads(line)) for what, line in zip(names, done)}
    for what, found in targets.items():
        _refuse_unlisted(found, what, allow_device_kernels)
    return targets


def check_artifact_modules(files: Mapping[str, bytes], names: Sequence[str],
                           directory: str | Path, *, mesh: dict[str, int] | None = None,
                           allow_device_kernels: bool = False) -> dict[str, set[str]]:
    """The modules ``names`` of an artifact this user did not sign (those ``files`` has),
    checked in one child process; each named ``directory (file)`` in errors. Returns their
    custom-call targets by file name."""
    whats = {f: f"{directory} ({f})" for f in names if f in files}
    found = check_untrusted_modules({w: files[f] for f, w in whats.items()}, mesh=mesh,
                                    directory=directory, allow_device_kernels=allow_device_kernels)
    return {f: found[w] for f, w in whats.items()}


def _lines(output: bytes | None) -> list[str]:
    """The child's complete result lines (one JSON list a module checked)."""
    text = (output or b"").decode(errors="replace")
    return [line for line in text.split("\n")[:-1] if line.startswith("[")]


def _refuse_unlisted(targets: set[str], what: str, allow_device_kernels: bool) -> None:
    allowed = _allowed_targets(allow_device_kernels)
    refused = sorted(t for t in targets if t not in allowed)
    kernels = [t for t in refused if is_device_kernel(t) and t in _allowed_targets(True)]
    if kernels and kernels == refused:
        raise ArtifactError(f"{what}: its StableHLO runs compiled device kernels "
                            f"({shown(', '.join(kernels), 400)}), native code luxc does not run from an "
                            "artifact this user did not sign; if you trust its author, pass "
                            "allow_device_kernels=True to luxc.load")
    if refused:
        raise ArtifactError(f"{what}: its StableHLO calls native functions "
                            f"{shown(', '.join(refused), 400)} "
                            "by name (custom_call), which luxc does not accept from an artifact "
                            "this user did not sign")


def is_device_kernel(target: str) -> bool:
    """Whether custom-call ``target`` carries a compiled kernel (device code)."""
    return target in DEVICE_KERNEL_TARGETS or bool(_DEVICE_KERNEL_NAME.search(target))


def _allowed_targets(allow_device_kernels: bool = False) -> set[str]:
    stable = stable_custom_call_targets() - _NEVER
    return stable if allow_device_kernels else {t for t in stable if not is_device_kernel(t)}


def _main() -> None:
    import jax
    from jax import export as jax_export

    mesh, sizes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    data = sys.stdin.buffer.read()
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    if offsets[-1] != len(data):
        raise SystemExit(f"expected {offsets[-1]} bytes of modules, read {len(data)}")
    for start, end in zip(offsets, offsets[1:]):
        exported = jax_export.deserialize(bytearray(data[start:end]))
        shardings = input_shardings(mesh, exported)
        args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
                for a, s in zip(exported.in_avals, shardings)]
        jax.jit(exported.call).lower(*args)  # where fuzzed modules crashed or hung
        # One line a module, flushed: if a later module crashes the child, the parent knows which.
        print(json.dumps(sorted(custom_call_targets(exported))), flush=True)
