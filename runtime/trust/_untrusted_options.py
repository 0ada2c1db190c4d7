"""The XLA options luxc takes from an artifact this user did not sign.

XLA options are instructions to the compiler, not data: some write files (``xla_dump_to``), some
abort the process (an unknown name), and XLA refuses a value that is not an int32 by failing the
compile. From an artifact this user did not sign, luxc applies only options that change how fast
or how exactly the step runs, each with a value in its range; any other is dropped with a note,
never a failed run. A signed artifact's options are the user's own and apply as written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from luxc.runtime.messages._shown import shown


def _flag(value: Any) -> bool:
    return type(value) is bool


def _among(*allowed: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and value in allowed


# name -> whether a value is acceptable (type and range).
SAFE_XLA_OPTIONS: dict[str, Callable[[Any], bool]] = {
    "xla_cpu_enable_fast_math": _flag, "xla_cpu_fast_math_honor_nans": _flag,
    "xla_cpu_fast_math_honor_infs": _flag, "xla_cpu_fast_math_honor_division": _flag,
    "xla_cpu_fast_math_honor_functions": _flag, "xla_cpu_use_fusion_emitters": _flag,
    "xla_cpu_use_xnnpack": _flag, "xla_cpu_use_onednn": _flag,
    "xla_cpu_prefer_vector_width": _among(128, 256, 512),  # bits: SSE, AVX2, AVX-512
    "xla_gpu_enable_fast_min_max": _flag,
    "xla_backend_optimization_level": _among(0, 1, 2, 3),  # LLVM's -O0 .. -O3
}


def untrusted_xla_options(options: dict[str, Any], signed: bool,
                          notes: list[str]) -> dict[str, Any]:
    """The options of ``options`` (an artifact's) that luxc applies; one line in ``notes`` for
    each kind of option dropped.

    >>> notes = []
    >>> untrusted_xla_options({"xla_dump_to": "/tmp/x", "xla_cpu_enable_fast_math": True,
    ...                        "xla_backend_optimization_level": 99}, False, notes)
    {'xla_cpu_enable_fast_math': True}
    >>> len(notes)
    2
    """
    if signed:
        return dict(options)
    safe = {k: v for k, v in options.items() if k in SAFE_XLA_OPTIONS and SAFE_XLA_OPTIONS[k](v)}
    unknown = sorted(shown(k) for k in options if k not in SAFE_XLA_OPTIONS)
    out_of_range = sorted(f"{shown(k)}={shown(repr(v))}" for k, v in options.items()
                          if k in SAFE_XLA_OPTIONS and k not in safe)
    if unknown:
        notes.append(f"ignored the XLA options {', '.join(unknown)} of an artifact this user did "
                     "not sign (only performance options are taken from one)")
    if out_of_range:
        notes.append(f"ignored the XLA options {', '.join(out_of_range)} of an artifact this user "
                     "did not sign: a value of the wrong type or out of the option's range")
    return safe
