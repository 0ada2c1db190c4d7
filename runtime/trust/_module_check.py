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
JSON on standard output, ``{"module": i, "targets": [...]}``, flushed as each module is done.
Each module has its own time limit, counted from the answer about the one before; an answer out
of turn is a failure; what an earlier module calls is judged before a later one's failure is
reported; the child's last exception line reaches the user escaped.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
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
# An answer line's bound (a module's sorted targets), and how much of stderr is read back.
_MAX_ANSWER = 1 << 20
# A Python exception's line ("ValueError: ...", "jax.errors.Foo: ..."), not jax's notes after it.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
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
    rather than once a module. Each module has ``timeout`` seconds of its own, counted from the
    answer about the one before. Returns each module's custom-call targets; an error names the
    module it is about."""
    if not timeout > 0:  # NaN too
        raise ValueError(f"timeout must be a positive number of seconds (or math.inf); "
                         f"received {timeout!r}")
    names = list(modules)
    if not names:
        return {}
    path = child_import_path(*([directory] if directory is not None else []))
    argv = [sys.executable, "-I", "-W", "ignore", "-c", _CHILD, json.dumps(path),
            json.dumps(mesh), json.dumps([len(modules[n]) for n in names])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    with (tempfile.TemporaryDirectory(prefix="luxc-module-check-") as empty,
          tempfile.TemporaryFile() as errors):
        # Its own process group, so that stopping it stops whatever it started too.
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errors, cwd=empty, env=env,
                                 start_new_session=os.name == "posix")
        # Written by a thread, one module after the other: no joined copy, nothing on disk.
        threading.Thread(target=_feed, args=(child, [modules[n] for n in names]),
                         daemon=True).start()
        try:
            found, failed = _answers(child, names, timeout)
            if failed is None:  # every module answered: the child ends on its own
                try:
                    child.wait(_bounded(timeout))
                except subprocess.TimeoutExpired:
                    failed = "timeout"
        finally:
            _stop(child)
        for what, targets in found.items():  # what an earlier module calls is said first
            _refuse_unlisted(targets, what, allow_device_kernels)
        if failed is None and child.returncode == 0:
            return found
        last = _last_error_line(errors)
        if len(found) < len(names):  # the module it was on
            raise _failure(names[len(found)], failed, child.returncode, timeout, last)
        # It answered about every module, then failed on its way out: no one module is to
        # blame, so the message names them all (and all are refused).
        raise _failure(_listed(names), failed, child.returncode, timeout, last,
                       answered=len(names))


def _bounded(timeout: float) -> float | None:
    """``timeout`` as the standard library's waits take it (``None``: no limit)."""
    return None if timeout == float("inf") else timeout


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _stop(child: subprocess.Popen) -> None:
    """Kill the child (and its process group) if it still runs, and reap it. Its stdout is left
    to the thread reading it, which may be inside a read (closing it here would wait for it)."""
    if child.poll() is None:
        try:
            if os.name == "posix":
                os.killpg(child.pid, signal.SIGKILL)  # not yet reaped: the group is still its
            else:
                child.kill()
        except OSError:  # it ended meanwhile
            pass
    child.wait()


def _failure(what: str, failed: str | None, returncode: int, timeout: float,
             last: str, answered: int = 0) -> ArtifactError:
    """The refusal of ``what``; ``answered``: the child failed after answering about all of that
    many modules (``what`` then names them all)."""
    its, it = ("their", "them") if answered > 1 else ("its", "it")
    when = "" if not answered else " after its answer" if answered == 1 else " after its answers"
    if failed == "timeout":
        if answered:
            return ArtifactError(f"{what}: the checking process did not end within {timeout:.0f} s"
                                 f"{when}; luxc refuses {it}")
        return ArtifactError(f"{what}: checking its StableHLO did not finish in {timeout:.0f} s; "
                             "luxc refuses it")
    how = ("it answered out of turn" if failed == "out of turn"
           else f"killed by signal {signal.Signals(-returncode).name}" if returncode < 0
           else f"exit code {returncode}" if returncode
           else "it ended without answering")
    return ArtifactError(f"{what}: {its} StableHLO made the checking process fail{when} ({how}"
                         f"{': ' + shown(last, 200) if last else ''}); luxc refuses {it}")


def _feed(child: subprocess.Popen, modules: list[bytes]) -> None:
    try:
        for module in modules:
            child.stdin.write(module)
        child.stdin.close()
    except (OSError, ValueError):  # the child ended (or was stopped) before reading them all
        pass


def _answers(child: subprocess.Popen, names: list[str], timeout: float
             ) -> tuple[dict[str, set[str]], str | None]:
    """Read the child's answer about each module in turn, each within ``timeout`` seconds;
    return the targets of those answered and ``None``, ``"timeout"``, ``"out of turn"`` or
    ``"ended"`` (the child's output ended before the next answer)."""
    # Only answer lines are kept, and no more than there are modules: memory stays bounded
    # whatever the child writes, before, between or after its answers.
    lines: queue.Queue = queue.Queue()

    def pump() -> None:  # a thread, so that waiting for a line has a time limit on any OS
        wanted = len(names)
        try:
            while wanted and (line := child.stdout.readline(_MAX_ANSWER)):
                if line.startswith(b'{"module": '):
                    lines.put(line)
                    wanted -= 1
            child.stdout.close()
        except (OSError, ValueError):  # the pipe closed under it: the child was stopped
            pass
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    found: dict[str, set[str]] = {}
    for index, what in enumerate(names):
        try:
            line = lines.get(timeout=_bounded(timeout))
        except queue.Empty:
            return found, "timeout"
        if line is None:
            return found, "ended"
        targets = _answer(line, index)
        if targets is None:
            return found, "out of turn"
        found[what] = targets
    return found, None


def _answer(line: bytes, index: int) -> set[str] | None:
    """The targets of the child's answer ``{"module": index, "targets": [...]}``, or ``None``
    if it is not that."""
    try:
        answer = json.loads(line)
        targets = answer["targets"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if (answer.get("module") != index or not isinstance(targets, list)
            or not all(isinstance(t, str) for t in targets)):
        return None
    return set(targets)


def _last_error_line(errors) -> str:
    """The child's exception line from the end of its stderr (else its last line)."""
    errors.seek(0, os.SEEK_END)
    errors.seek(max(errors.tell() - _MAX_ANSWER, 0))
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)),
                lines[-1] if lines else "")


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
    for index, size in enumerate(sizes):
        data = bytearray(size)  # one module at a time in memory
        view, got = memoryview(data), 0
        while got < size and (n := sys.stdin.buffer.readinto(view[got:])):
            got += n
        if got != size:
            raise SystemExit(f"module {index}: expected {size} bytes, read {got}")
        exported = jax_export.deserialize(data)
        shardings = input_shardings(mesh, exported)
        args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
                for a, s in zip(exported.in_avals, shardings)]
        jax.jit(exported.call).lower(*args)  # where fuzzed modules crashed or hung
        # One line a module, flushed: the parent times each module and names the one that failed.
        answer = {"module": index, "targets": sorted(custom_call_targets(exported))}
        print(json.dumps(answer), flush=True)
