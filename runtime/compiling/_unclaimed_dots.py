"""Whether a compiled CPU step keeps what :mod:`luxc.passes.dot_bf16_batched` wrote.

The pass gives the batched bf16 dots of a step (attention's) a float32 result, the form
YNNPACK's bfloat16 kernel takes. Whether YNNPACK takes them is XLA's decision, made later:

- a dot YNNPACK does not claim reaches XLA:CPU's own batched-dot kernel, which has no
  ``bf16 × bf16 → f32`` form and fails when the step runs ("Unsupported element type for
  DotThunk::Execute: BF16 x BF16 = F32");
- with YNNPACK's dot fusions switched off (an XLA option; luxc's own default for a module
  that convolves keeps only its reductions) XLA upcasts the dots to float32 and the pass's
  transposed copies are pure cost (the bf16 transformer block: 195 against 131 ms).

:func:`withdraw_batched_dots` reads XLA's optimised HLO text and says when to compile the
module again without the pass: a batched ``bf16 × bf16 → f32`` dot outside a YNNPACK fusion, or
none inside one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from luxc.passes import PassRecord, dot_bf16_batched

# "%name = bf16[16,4,128,64]{3,2,1,0} ..." (an instruction or a parameter) and a computation's
# header, "%fused_computation.5 (param_0: bf16[...], ...) -> f32[...] {".
_DEFINITION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[")
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_DOT = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = f32\[[^=]* dot\(%([\w.\-]+), %([\w.\-]+)\)"
                  r".*lhs_batch_dims=")
_YNN_CALL = re.compile(r"calls=%([\w.\-]+).*\"kind\":\"__ynn_fusion\"")


def batched_bf16_dots(hlo_text: str) -> tuple[list[str], list[str]]:
    """The names of the batched dots with bfloat16 operands and a float32 result in XLA's
    optimised HLO: those inside a YNNPACK fusion, and those outside one."""
    types: dict[str, str] = {}
    ynn: set[str] = set()
    dots: list[tuple[str, str, str, str]] = []  # (computation, dot, lhs, rhs)
    computation = ""
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            computation = header.group(1)
            continue
        definition = _DEFINITION.match(line)
        if definition:
            types[definition.group(1)] = definition.group(2)
        call = _YNN_CALL.search(line)
        if call:
            ynn.add(call.group(1))
        dot = _DOT.match(line)
        if dot:
            dots.append((computation, *dot.groups()))
    bf16 = [(computation, name) for computation, name, lhs, rhs in dots
            if types.get(lhs) == types.get(rhs) == "bf16"]
    return ([name for computation, name in bf16 if computation in ynn],
            [name for computation, name in bf16 if computation not in ynn])


def withdraw_batched_dots(records: Sequence[PassRecord], hlo_text: Callable[[], str]) -> bool:
    """Whether the step compiled from ``records``' module must be compiled again without
    ``dot_bf16_batched`` (False when the pass rewrote nothing; only then is ``hlo_text()``, the
    executable's optimised HLO, printed and read)."""
    if not any(r.name == dot_bf16_batched.NAME and r.rewrites for r in records):
        return False
    claimed, unclaimed = batched_bf16_dots(hlo_text())
    return bool(unclaimed) or not claimed


def without_batched_dots(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` less ``dot_bf16_batched``."""
    return tuple(n for n in names if n != dot_bf16_batched.NAME)
