"""Checking StableHLO that someone else wrote before this process touches it.

Parsing and compiling a module runs none of its author's code, but two things still reach
native code from it: a ``custom_call`` names a native function by string (a host callback, any
registered kernel) and calls it with the author's operands; and MLIR's deserializer is not
hardened against hostile bytes (fuzzed modules crashed it with heap corruption, or hung it). So
an artefact this user did not sign is first parsed and lowered in a child process, with a time
limit, and its custom calls are checked against the targets jax itself guarantees stable (minus
those that call back into a foreign runtime). A crash or a hang stays in the child and becomes
one ``ArtifactError``; only a module that passed is then loaded here.

Run as ``python -m luxc.runtime.module_check`` it is that child: a ``.jaxexport`` on standard
input, the custom-call targets as JSON on standard output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from luxc.runtime._jax_internal import stable_custom_call_targets
from luxc.runtime.artifact_mesh import input_shardings
from luxc.runtime.errors import ArtifactError
from luxc.runtime.module_ops import walk

CHECK_SECONDS = 120
# Targets that hand control to another runtime's code are not data, whoever wrote them.
_NEVER = {"tf.call_tf_function"}


def custom_call_targets(exported) -> set[str]:
    """The ``call_target_name`` of every ``stablehlo.custom_call`` in ``exported``'s module."""
    targets: set[str] = set()

    def visit(op) -> None:
        if op.name == "stablehlo.custom_call":
            targets.add(str(op.attributes["call_target_name"]).strip('"'))

    walk(exported.mlir_module_serialized, visit)
    return targets


def check_untrusted(jaxexport: bytes, what: str, timeout: float = CHECK_SECONDS, *,
                    mesh: dict[str, int] | None = None) -> None:
    """Parse, lower and check the custom calls of ``jaxexport`` in a child process; a sharded
    module is lowered on ``mesh`` (the manifest's, e.g. ``{"data": 8}``)."""
    try:
        child = subprocess.run([sys.executable, "-m", "luxc.runtime.module_check",
                                json.dumps(mesh)],
                               input=bytes(jaxexport), capture_output=True, timeout=timeout,
                               env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{what}: checking its StableHLO did not finish in {timeout:.0f} s; "
                            "luxc refuses it") from None
    if child.returncode != 0:
        how = (f"killed by signal {signal.Signals(-child.returncode).name}"
               if child.returncode < 0 else f"exit code {child.returncode}")
        last = (child.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
        raise ArtifactError(f"{what}: its StableHLO made the checking process fail ({how}"
                            f"{': ' + last[:200] if last else ''}); luxc refuses it")
    targets = set(json.loads(child.stdout.decode().strip().splitlines()[-1]))
    allowed = _allowed_targets()
    refused = sorted(t for t in targets if t not in allowed)
    if refused:
        raise ArtifactError(f"{what}: its StableHLO calls native functions {', '.join(refused)} "
                            "by name (custom_call), which luxc does not accept from an artefact "
                            "this user did not sign")


def _allowed_targets() -> set[str]:
    return stable_custom_call_targets() - _NEVER


def _main() -> None:
    import jax
    from jax import export as jax_export

    exported = jax_export.deserialize(bytearray(sys.stdin.buffer.read()))
    shardings = input_shardings({"mesh": json.loads(sys.argv[1])}, exported)
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
            for a, s in zip(exported.in_avals, shardings)]
    jax.jit(exported.call).lower(*args)  # where fuzzed modules crashed or hung
    print(json.dumps(sorted(custom_call_targets(exported))))


if __name__ == "__main__":
    _main()
