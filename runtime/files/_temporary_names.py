"""The names of luxc's temporary files and directories, and the removal of those a killed
writer left behind.

A temporary is ``.{target}.luxc-{pid}-{12 hex}.{kind}`` beside its target: ``tmp`` for a file
being written (:mod:`luxc.runtime.files._atomic_write`), ``partial`` for an artifact directory being
written, ``old`` for a replaced directory on its way out (:mod:`luxc.runtime.files._directory_swap`).
The writer's process id in the name lets the next write to the same target remove the
leftovers of a writer that died — and only those: a live writer's temporary, another user's,
or a file luxc did not name is never touched.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal

Kind = Literal["tmp", "partial", "old"]

TEMPORARY = re.compile(r"\.(?P<name>.+)\.luxc-(?P<pid>\d+)-[0-9a-f]{12}\.(?P<kind>tmp|partial|old)")


def temporary_name(path: Path, kind: Kind = "tmp") -> Path:
    """A fresh temporary name beside ``path`` (``kind``: ``tmp`` file, ``partial`` or ``old``
    directory)."""
    return path.with_name(f".{path.name}.luxc-{os.getpid()}-{secrets.token_hex(6)}.{kind}")


def _alive(pid: int) -> bool:
    if not 0 < pid < 1 << 22:  # Linux's pid_max bound: no process ever had this id
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def remove_stale_temporaries(path: str | Path,
                             removable_directory: Callable[[Path], bool] = lambda p: False
                             ) -> list[Path]:
    """Remove the temporaries that killed writers left next to ``path``; return them.

    Files (``tmp``) are removed; a directory (``partial``, ``old``) only when
    ``removable_directory(it)`` says it holds nothing but what luxc writes there."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in candidates:
        m = TEMPORARY.fullmatch(p.name)
        if m is None or m["name"] != path.name:
            continue
        try:
            info = os.lstat(p)
            pid = int(m["pid"])
            if info.st_uid != os.getuid() or pid == os.getpid() or _alive(pid):
                continue
            if m["kind"] == "tmp" and stat.S_ISREG(info.st_mode):
                p.unlink()
            elif m["kind"] != "tmp" and stat.S_ISDIR(info.st_mode) and removable_directory(p):
                shutil.rmtree(p)
            else:
                continue
            removed.append(p)
        except OSError:
            continue
    return removed
