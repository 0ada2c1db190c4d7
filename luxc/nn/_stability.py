"""luxc's DispatchDoctor: a trace-time check that an output keeps the floating dtype it
should (see ``luxc.set_dispatch_doctor_preferences``)."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc._preferences import preference


class TypeInstabilityError(TypeError):
    """An output changed floating dtype or is weak-typed while the check is ``"error"``."""


def floating_dtype(tree: Any) -> np.dtype | None:
    """The promoted dtype of the floating array leaves of ``tree``; ``None`` if there are none."""
    dts = [np.dtype(leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree)
           if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.floating)]
    return np.dtype(jnp.result_type(*dts)) if dts else None


def enabled(level: str) -> bool:
    """Whether the ``instability_check_<level>`` preference is on."""
    return preference(f"instability_check_{level}") != "disable"


def check_output(level: str, what: str, expected: np.dtype | None, out: Any) -> None:
    """Warn or raise (per the ``instability_check_<level>`` preference) if a floating leaf of
    ``out`` is not of dtype ``expected`` or is weak-typed."""
    mode = preference(f"instability_check_{level}")
    if mode == "disable" or expected is None:
        return
    for leaf in jax.tree_util.tree_leaves(out):
        if not isinstance(leaf, jax.Array | np.ndarray | float):
            continue
        aval = jax.typeof(leaf)
        if not jnp.issubdtype(aval.dtype, jnp.floating):
            continue
        if aval.dtype != expected or aval.weak_type:
            weak = " weak-typed" if aval.weak_type else ""
            message = (f"{what}: an output is{weak} {aval.dtype} where {expected} was expected "
                       f"(an accidental promotion; instability_check_{level}={mode!r})")
            if mode == "error":
                raise TypeInstabilityError(message)
            warnings.warn(message, stacklevel=4)
            return
