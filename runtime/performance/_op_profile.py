"""Where a step's time goes, op by op: XLA's own per-op trace events matched to the optimised
HLO's instructions and to the user's source line that made each one.

    executable ──jax.profiler.trace──▶ XSpace ──ProfileData──▶ events (hlo_op, start, duration)
    compiled.as_text() ──▶ instruction: opcode, shape, op_name (jax.named_scope), stack frames

An op's time per step is the union of its events' intervals (an op XLA splits over worker
threads counts its wall time once), from its start to its completion (an asynchronous op's
``end:`` event), divided by the steps run; a stretch during which several ops are in flight
counts equally to each, so the ops' shares of the step add up to at most 1. The reader keys on the events'
``hlo_op`` / ``hlo_module`` statistics, which XLA writes on every backend (XLA:CPU with
``--xla_cpu_enable_xprof_traceme``, GPU on its device planes); only XLA:CPU is tested.

The source line is the innermost frame of the op's stack (HLO ``StackFrames``) outside the
libraries jax excludes from tracebacks (jax itself and, once ``luxc`` traces, luxc's own files):
for a convolution made inside ``nn.Conv`` that is the user's line that called the model.
"""

from __future__ import annotations

import dataclasses
import glob
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from luxc.runtime.performance._hlo_flops import instruction_flops
from luxc.runtime.trust._native_calls import NativeCallCheck

# The flag that makes XLA:CPU emit one trace event per HLO op (off by default: it costs a
# little per op).
CPU_TRACE_OPTIONS = {"xla_cpu_enable_xprof_traceme": True}


@dataclasses.dataclass(frozen=True)
class OpRecord:
    """One HLO operation of the step: ``seconds`` per step, ``share`` of the mean step time,
    ``count`` events per step, ``kind`` (opcode, or ``fusion(<root opcode>)``), ``flops`` per
    call (the trace's where it gives them, else counted from the HLO's shapes:
    :mod:`luxc.runtime.performance._hlo_flops`), ``bytes`` (the trace's bytes accessed, else the
    op's output size), the user's ``source`` (``file:line``) and the layer ``scope``."""

    name: str
    seconds: float
    share: float
    count: float
    kind: str
    flops: float | None
    bytes: int | None
    source: str | None
    scope: str | None

    @property
    def flops_per_second(self) -> float | None:
        """The op's achieved FLOP/s: its FLOPs per step over its time per step."""
        if self.flops is None or self.seconds <= 0:
            return None
        return self.flops * self.count / self.seconds

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "flops_per_second": self.flops_per_second}


@dataclasses.dataclass(frozen=True)
class _Instruction:
    kind: str
    bytes: int | None
    op_name: str | None
    frame: int | None


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16|f8\w*|c64|c128)\[([\d,]*)\]")
_TABLE_ROW = re.compile(r"^(\d+)\s+(.*)$")


def _shape_bytes(text: str) -> int | None:
    total, found = 0, False
    for dtype, dims in _SHAPE.findall(text):
        found = True
        bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype.split("e")[0]) or 8)
        total += int(np.prod([int(d) for d in dims.split(",") if d] or [1])) * bits // 8
    return total if found else None


def _fused_roots(hlo: str) -> dict[str, str]:
    """``fused computation name -> opcode of its root``: what a fusion mostly does."""
    roots, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            current = header.group(1)
        m = _INSTRUCTION.match(line)
        if current and m and line.lstrip().startswith("ROOT"):
            roots[current] = m.group(3)
    return roots


def parse_instructions(hlo: str) -> dict[str, _Instruction]:
    """Every instruction of the optimised HLO text by name."""
    roots = _fused_roots(hlo)
    out = {}
    for line in hlo.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        kind = opcode
        if opcode == "fusion":
            calls = re.search(r"calls=%([\w.\-]+)", rest)
            root = roots.get(calls.group(1)) if calls else None
            kind = f"fusion({root})" if root and root not in ("tuple", "bitcast") else "fusion"
        op_name = re.search(r'op_name="([^"]*)"', rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        out[name] = _Instruction(kind, _shape_bytes(shape), op_name and op_name.group(1),
                                 frame and int(frame.group(1)))
    return out


def _table(hlo: str, title: str) -> dict[int, str]:
    rows, inside = {}, False
    for line in hlo.splitlines():
        if line.strip() == title:
            inside = True
            continue
        if inside:
            m = _TABLE_ROW.match(line.strip())
            if not m:
                if rows:
                    break
                continue
            rows[int(m.group(1))] = m.group(2)
    return rows


def stack_frames(hlo: str) -> dict[int, list[tuple[str, int]]]:
    """``stack_frame_id -> [(file, line), …]`` innermost first, from the HLO's frame tables."""
    files = {k: v.strip('"') for k, v in _table(hlo, "FileNames").items()}
    locations = {}
    for k, v in _table(hlo, "FileLocations").items():
        f, line = re.search(r"file_name_id=(\d+)", v), re.search(r"\bline=(\d+)", v)
        if f and line:
            locations[k] = (files.get(int(f.group(1)), "?"), int(line.group(1)))
    frames = {}
    for k, v in _table(hlo, "StackFrames").items():
        loc, parent = re.search(r"file_location_id=(\d+)", v), re.search(r"parent_frame_id=(\d+)", v)
        # The printed parent is the parent's id + 1; 1 (a parent id of 0) is the outermost.
        frames[k] = (int(loc.group(1)) if loc else None, int(parent.group(1)) - 1 if parent else 0)
    stacks = {}
    for k in frames:
        stack, seen, node = [], set(), k
        while node in frames and node not in seen:
            seen.add(node)
            loc, parent = frames[node]
            if loc in locations:
                stack.append(locations[loc])
            node = parent
        stacks[k] = stack
    return stacks


def _scope(op_name: str | None) -> str | None:
    """The ``layer_N`` scopes (Chain's jax.named_scope; ``jvp(layer_1)`` under autodiff) of an
    op's name, outermost first."""
    if not op_name:
        return None
    layers = re.findall(r"\b(layer_\d+)\b", op_name)
    return "/".join(dict.fromkeys(layers)) or None


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


# Ops whose trace events enclose the events of the ops they run (a loop, a branch, a call).
CONTAINER_KINDS = frozenset({"while", "conditional", "call"})


def _shared_seconds(events: dict[str, list[tuple[float, float, dict]]],
                    containers: frozenset[str] | set[str] = frozenset()) -> dict[str, float]:
    """Each op's wall time in seconds: the union of its intervals (an op XLA splits over worker
    threads counts once), a stretch during which ``k`` ops are in flight counting ``1/k`` to
    each (a convolution running on Eigen's threads while the executor runs other ops), so that
    the ops' times add up to at most the traced wall time. An op in ``containers`` (a ``while``
    loop) is in flight while the ops inside it run: it counts only the stretches in which
    nothing else does (its own bookkeeping), not half of its body's time."""
    points = sorted((t, edge, op) for op, evs in events.items()
                    for s, e in _union([(s, e) for s, e, _ in evs]) for t, edge in ((s, 1), (e, -1)))
    seconds, active, last = dict.fromkeys(events, 0.0), set(), None
    for t, edge, op in points:
        if active and last is not None:
            inner = [other for other in active if other not in containers] or active
            for other in inner:
                seconds[other] += (t - last) / len(inner) / 1e9
        (active.add if edge > 0 else active.discard)(op)
        last = t
    return seconds


def read_events(trace_dir: str, module: str) -> dict[str, list[tuple[float, float, dict]]]:
    """``hlo_op -> [(start_ns, end_ns, stats)]`` of module ``module`` in the trace under
    ``trace_dir``; device planes are preferred over the host's when both carry HLO ops.

    XLA:CPU runs some ops asynchronously (a convolution on Eigen's threads): the op's own event
    covers its launch only, and the executor marks its completion with an ``end: <op>`` event
    tied to it by a trace flow (the op's ``_p`` statistic is the end event's ``_c``). An op's
    interval runs to that completion when it comes later: a convolution's 33 ms, not the
    0.4 ms of its launch."""
    from jax.profiler import ProfileData

    files = glob.glob(str(Path(trace_dir, "**", "*.xplane.pb")), recursive=True)
    by_plane: dict[bool, dict] = {True: defaultdict(list), False: defaultdict(list)}
    completions: dict[int, float] = {}
    for file in files:
        for plane in ProfileData.from_file(file).planes:
            device = plane.name.startswith("/device:")
            for line in plane.lines:
                for event in line.events:
                    stats = dict(event.stats)
                    start, op = float(event.start_ns), stats.get("hlo_op")
                    if op is None and "_c" in stats and event.name.startswith("end: "):
                        completions[stats["_c"]] = start + float(event.duration_ns)
                    if op is None or stats.get("hlo_module", module) != module:
                        continue
                    by_plane[device][op].append((start, start + float(event.duration_ns), stats))
    events = dict(by_plane[True] or by_plane[False])
    return {op: [(s, max(e, completions.get(stats.get("_p"), e)), stats) for s, e, stats in evs]
            for op, evs in events.items()}


def _module_name(hlo: str) -> str:
    m = re.match(r"\s*HloModule\s+([\w.\-]+)", hlo)
    return m.group(1) if m else ""


def user_source(stack: list[tuple[str, int]]) -> str | None:
    """The innermost frame outside jax's traceback exclusions (jax, luxc once registered)."""
    from luxc.runtime._jax_internal import excluded_from_tracebacks

    for file, line in stack:
        if not excluded_from_tracebacks(file):
            return f"{file}:{line}"
    return None


def profile_ops(compiled: jax.stages.Compiled, run: Callable[[], object], steps: int,
                step_seconds: float | None = None) -> list[OpRecord]:
    """Run ``run()`` (one synchronous call of ``compiled``) ``steps`` times under jax's profiler
    and return the ops of ``compiled`` by time per step, largest first.

    ``compiled`` must emit per-op events (on CPU: compiled with :data:`CPU_TRACE_OPTIONS`).
    ``share`` is relative to ``step_seconds`` (default: the mean wall time of the traced calls,
    so that the shares add up to at most 1).
    """
    hlo = compiled.as_text()
    instructions, stacks = parse_instructions(hlo), stack_frames(hlo)
    counted = instruction_flops(hlo)
    run()  # the first call allocates
    times = []
    with tempfile.TemporaryDirectory(prefix="luxc-op-profile-") as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
        events = read_events(trace_dir, _module_name(hlo))
    step = step_seconds or float(np.mean(times))
    containers = {op for op in events if instructions.get(op) is not None
                  and instructions[op].kind in CONTAINER_KINDS}
    records, shared = [], _shared_seconds(events, containers)
    for op, evs in events.items():
        inst = instructions.get(op, _Instruction("?", None, None, None))
        seconds = shared[op] / steps
        flops = next((float(st["flops"]) for _, _, st in evs if "flops" in st), None)
        if flops is None and op in counted:
            flops = float(counted[op])
        nbytes = next((int(st["bytes_accessed"]) for _, _, st in evs if "bytes_accessed" in st),
                      inst.bytes)
        source = user_source(stacks.get(inst.frame, [])) if inst.frame else None
        records.append(OpRecord(op, seconds, seconds / step, len(evs) / steps, inst.kind, flops,
                                nbytes, source, _scope(inst.op_name)))
    return sorted(records, key=lambda r: r.seconds, reverse=True)


def _traced(xla_options: dict) -> dict:
    """``xla_options`` with XLA:CPU's per-op tracing on (on CPU)."""
    options = dict(xla_options)
    if jax.default_backend() == "cpu":
        options.update(CPU_TRACE_OPTIONS)
    return options


def profile_exported(exported, args: tuple, xla_options: dict, steps: int = 20,
                     guard: Callable[[Callable[[], object]], object] | None = None,
                     native_check: NativeCallCheck | None = None) -> list[OpRecord]:
    """:func:`profile_ops` for the module of ``exported`` called with ``args``: compiled again
    with per-op tracing on (and without donation, so ``args`` stay valid across the calls).
    ``guard(call)`` (when given) makes each call, e.g. where Ctrl-C stops a stranger's step;
    ``native_check`` checks a stranger's native calls before the compile."""
    from luxc.runtime.compiling._executable import compile_exported

    compiled, _ = compile_exported(exported, args, xla_options=_traced(xla_options),
                                   native_check=native_check)

    def run() -> object:
        return jax.block_until_ready(compiled(*args))

    return profile_ops(compiled, run if guard is None else (lambda: guard(run)), steps)


def profile_executable(exe, args: tuple, steps: int = 20) -> list[OpRecord]:
    """:func:`profile_exported` for a luxc ``Executable`` (its optimised module and XLA
    options); the executable itself is not touched. A step that keeps its scan buffers between
    calls is profiled that way too: each call gets the buffers the last one returned."""
    if not exe.workspace:
        return profile_exported(exe.optimized, args, exe.xla_options, steps)
    from luxc.runtime.compiling._executable import compile_exported
    from luxc.runtime.compiling._workspace import WorkspaceCall

    compiled, _ = compile_exported(exe.workspace_module, (*args, exe.workspace),
                                   donate_argnums=(len(args),),
                                   xla_options=_traced(exe.xla_options))
    call = WorkspaceCall(compiled, exe.workspace, compiled.input_shardings[0][-1])
    return profile_ops(compiled, lambda: jax.block_until_ready(call(*args)), steps)
