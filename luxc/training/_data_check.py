"""A look at the data of a compiled call when it compiles: non-finite values warn.

NaN or inf in the data makes the loss, then the parameters, NaN with no error from XLA. The
check runs once per compile (a cache miss: the first call, and any call whose shapes, dtypes
or placements change), on the example the step is compiled for, so it costs nothing on the
calls that hit the cache. It reads numpy arrays and jax arrays this process holds whole (a
device-to-host copy, small beside a compile); later batches are not checked — check them
with ``np.isfinite`` where they are made if they may carry NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from luxc.runtime.messages._warn import warn_user


class NonFiniteDataWarning(UserWarning):
    """The data a step was compiled for holds NaN or inf."""


def _host(x: Any) -> np.ndarray | None:
    if isinstance(x, jax.Array):
        return np.asarray(x) if x.is_fully_addressable else None
    return x if isinstance(x, np.ndarray) else None


def warn_non_finite(data: Any, name: str, caller: str) -> None:
    """Warn (one line per leaf) for each floating leaf of ``data`` with a NaN or inf."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
        host = _host(leaf)
        if host is None or not np.issubdtype(host.dtype, np.inexact):
            continue
        bad = ~np.isfinite(host)
        count = int(bad.sum())
        if count:
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            plural = "s" if count > 1 else ""
            warn_user(f"{caller}: {name}{jax.tree_util.keystr(path)} has {count} non-finite "
                      f"value{plural} (NaN or inf), the first at index {first}; the loss and the "
                      f"parameters will become NaN: clean or mask the data first",
                      NonFiniteDataWarning)
