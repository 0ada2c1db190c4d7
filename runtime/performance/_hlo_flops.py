"""FLOPs of each instruction of an optimised HLO module, counted from its text.

XLA:CPU's per-op trace events carry no FLOPs, so ``luxc profile --ops`` counts them from the
shapes (a multiply-add is 2 FLOPs, as XLA's own cost analysis counts):

* ``dot``: ``2 * prod(result) * prod(contracted dims of the lhs)`` — for ``(b, m, k) @ (b, k, n)``
  that is ``2 * b * m * n * k``;
* ``convolution``: ``2 * prod(result) * prod(window) * kernel input features`` (per group: the
  kernel's ``i`` dimension), padding positions included;
* an elementwise arithmetic instruction: one FLOP per result element; ``reduce``: one per
  input element; ``reduce-window`` (pooling): one per result element and window position;
* a ``fusion``: the sum over the instructions of the computation it calls;
* data movement (copy, transpose, slice, broadcast, …): 0.
"""

from __future__ import annotations

import math
import re

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_ARRAY = re.compile(r"\b(?:pred|[subf]\d+|bf16|f8\w*|c64|c128)\[([\d,]*)\]")

# One FLOP per result element (comparisons and selects count, as in XLA's cost analysis).
ELEMENTWISE = frozenset({
    "add", "subtract", "multiply", "divide", "remainder", "maximum", "minimum", "negate", "abs",
    "exponential", "exponential-minus-one", "log", "log-plus-one", "logistic", "tanh", "sqrt",
    "rsqrt", "cbrt", "power", "atan2", "sine", "cosine", "tan", "erf", "floor", "ceil",
    "round-nearest-afz", "round-nearest-even", "sign", "compare", "select", "clamp", "and", "or",
    "xor", "not",
})


def _elements(shape: str) -> int:
    """Elements of every array in ``shape`` (a tuple's arrays summed)."""
    return sum(math.prod(int(d) for d in dims.split(",") if d) for dims in _ARRAY.findall(shape))


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _operands(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])


def _dot(shape: str, rest: str, shapes: dict[str, str]) -> int:
    lhs = _dims(shapes.get(_operands(rest)[0], ""))
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    dims = [int(d) for d in contracting.group(1).split(",") if d] if contracting else []
    return 2 * _elements(shape) * math.prod(lhs[d] for d in dims if d < len(lhs))


def _convolution(shape: str, rest: str, shapes: dict[str, str]) -> int:
    operands = _operands(rest)
    kernel = _dims(shapes.get(operands[1], "")) if len(operands) > 1 else []
    labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
    window = re.search(r"window=\{size=([\dx]+)", rest)
    in_features = kernel[labels.group(1).index("i")] if labels and kernel else 1
    size = math.prod(int(s) for s in window.group(1).split("x")) if window else 1
    return 2 * _elements(shape) * size * in_features


_Instruction = tuple[str, str, str, str]  # name, shape, opcode, the rest of the line


def instruction_flops(hlo: str) -> dict[str, int]:
    """``instruction name -> FLOPs`` for every instruction of the HLO text ``hlo`` that runs as
    an op of its own (a fusion's count includes what it calls; the instructions inside a fused
    computation or a reducer are not listed apart)."""
    shapes, bodies = _computations(hlo)
    inner = set(re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", hlo))
    return {inst[0]: _count(inst, shapes, bodies) for computation, body in bodies.items()
            if computation not in inner for inst in body}


def _computations(hlo: str) -> tuple[dict[str, str], dict[str, list[_Instruction]]]:
    """Every instruction's shape by name, and each computation's instructions."""
    shapes: dict[str, str] = {}
    bodies: dict[str, list[_Instruction]] = {}
    current = ""
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header and not line.startswith(" "):
            current = header.group(1)
            bodies[current] = []
            continue
        m = _INSTRUCTION.match(line)
        if m:
            shapes[m.group(1)] = m.group(2)
            bodies.setdefault(current, []).append(m.groups())
    return shapes, bodies


def _count(inst: _Instruction, shapes: dict[str, str], bodies: dict[str, list[_Instruction]],
           depth: int = 0) -> int:
    _, shape, opcode, rest = inst
    if opcode == "dot":
        return _dot(shape, rest, shapes)
    if opcode == "convolution":
        return _convolution(shape, rest, shapes)
    if opcode in ELEMENTWISE:
        return _elements(shape)
    if opcode == "reduce":
        operands = _operands(rest)
        inputs = operands[:max(1, len(operands) // 2)]
        return sum(_elements(shapes.get(o, "")) for o in inputs)
    if opcode == "reduce-window":
        window = re.search(r"window=\{size=([\dx]+)", rest)
        return _elements(shape) * (math.prod(int(v) for v in window.group(1).split("x"))
                                   if window else 1)
    if opcode == "fusion" and depth < 8:
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        body = bodies.get(calls.group(1), []) if calls else []
        return sum(_count(i, shapes, bodies, depth + 1) for i in body)
    return 0


_WHILE = re.compile(r"condition=%([\w.\-]+),\s*body=%([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_BRANCHES = re.compile(r"(?:branch_computations=\{([^}]*)\}|(?:true|false)_computation=%([\w.\-]+))")


def step_flops(hlo: str) -> int | None:
    """FLOPs of one run of the module: every instruction's (:func:`instruction_flops`) times
    the trip counts of the loops around it. XLA's ``cost_analysis()`` counts a loop's body
    once, whatever its trip count: a 12-block ``Stack`` reports about one block's FLOPs.
    ``None`` when a loop's trip count is not known (XLA records it for the loops jax's ``scan``
    and ``fori_loop`` lower to) or a conditional's branches differ in what they count."""
    shapes, bodies = _computations(hlo)
    entry = next((m.group(1) for line in hlo.splitlines()
                  if line.startswith("ENTRY") and (m := _COMPUTATION.match(line))), None)
    if entry is None:
        return None
    total, pending = 0, [(entry, 1)]
    while pending:  # HLO has no recursion: a computation called twice is counted twice
        computation, times = pending.pop()
        for inst in bodies.get(computation, []):
            _, _, opcode, rest = inst
            total += times * _count(inst, shapes, bodies)
            if opcode == "while":
                loop, trips = _WHILE.search(rest), _TRIP_COUNT.search(rest)
                if loop is None or trips is None:
                    return None
                pending += [(loop.group(1), times * (int(trips.group(1)) + 1)),
                            (loop.group(2), times * int(trips.group(1)))]
            elif opcode == "call":  # XLA:CPU wraps a small loop in one
                called = re.search(r"to_apply=%([\w.\-]+)", rest)
                pending += [(called.group(1), times)] if called else []
            elif opcode == "conditional":
                names = [n.strip().lstrip("%") for m in _BRANCHES.finditer(rest)
                         for n in (m.group(1) or m.group(2)).split(",")]
                counts = {_once(bodies, shapes, n) for n in names}
                if len(counts) != 1:
                    return None
                total += times * counts.pop()
    return total


def _once(bodies: dict[str, list[_Instruction]], shapes: dict[str, str], name: str) -> int:
    """FLOPs of one run of the computation ``name``, loops inside it counted once."""
    return sum(_count(inst, shapes, bodies) for inst in bodies.get(name, []))
