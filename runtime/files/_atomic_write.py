"""Atomic writes: nothing already on disk is lost to a failed write.

Every file is written to a temporary beside it (:mod:`luxc.runtime.files._temporary_names`) and
renamed over the target only when complete. The output checks refuse, before any long work, a
path luxc could not write at the end.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from luxc.runtime.files._errors import ArtifactError, WriteError
from luxc.runtime.files._temporary_names import remove_stale_temporaries, temporary_name


def write_atomic(path: str | Path, data: bytes | Iterable[bytes], *, mode: int = 0o666) -> None:
    """Write ``data`` (bytes, or chunks of bytes written as they come) to ``path`` so that
    ``path`` is either the old file or the new one.

    The new file is created with ``mode`` less the umask (by default the permissions of a
    plain ``open``), which the kernel applies: luxc never reads or changes the process umask.
    A failed write (``ENOSPC``: the disk is full) raises :class:`WriteError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            for chunk in [data] if isinstance(data, bytes | bytearray) else data:
                write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {path}: {e.strerror or e}; what was there before "
                         "is unchanged", e.errno) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (one call may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def check_writable_file(path: str | Path, what: str) -> None:
    """Refuse, before any long work, an output file luxc could not write at the end."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{what} {path} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise ArtifactError(f"{what} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):  # the new file is renamed in place there
        raise ArtifactError(f"{what} {path}: the directory {parent} is not writable")
    if path.exists() and os.stat(parent).st_mode & stat.S_ISVTX and \
            os.lstat(path).st_uid != os.getuid():
        raise ArtifactError(f"{what} {path} belongs to another user in a shared directory; luxc "
                            "cannot replace it")


def check_writable_directory(path: str | Path, what: str) -> None:
    """Refuse, before any long work, an output directory luxc could not create or write."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ArtifactError(f"{what} {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ArtifactError(f"{what} {path} is not writable")
        return
    existing = next((p for p in path.absolute().parents if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ArtifactError(f"{what} {path} cannot be created ({existing} is not a writable "
                            "directory)")
