"""Putting a finished directory in place of another, so that the target never stops existing
where the system allows it."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from luxc.runtime.files._temporary_names import temporary_name


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or file system has no such call."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_directory(new: Path, out: Path) -> Path | None:
    """Put directory ``new`` at ``out``. An existing ``out`` is swapped out in one step where
    the system can (so ``out`` never stops existing) and returned at ``new``'s old path; the
    caller decides whether to delete it."""
    if not out.exists():
        new.rename(out)
        return None
    if _rename_exchange(new, out):
        return new
    old = temporary_name(out, "old")
    out.rename(old)
    new.rename(out)
    return old
