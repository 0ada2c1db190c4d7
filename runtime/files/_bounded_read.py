"""Bounded reads of luxc's files, and the checks made on the bytes read.

Reads go through :func:`read_regular`: one ``open`` that refuses symbolic links and anything but
a regular file, a size bound checked before reading, and the bytes returned, so a check (a hash,
:func:`sha256`) and the use of the file see the same bytes. JSON is parsed by
:func:`parse_json` (a bad file is an :class:`ArtifactError`) and written by :func:`json_bytes`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_regular(path: str | Path, what: str, *, follow_symlinks: bool = False,
                 what_names_path: bool = False) -> int:
    """A read-only descriptor of the regular file ``path``, checked on the descriptor itself
    (``fstat``), so the file checked is the file read. Errors say ``{what} {path}`` (only
    ``what`` when ``what_names_path``).

    Opened with ``O_NONBLOCK``: a FIFO or a device named like a data file is refused at once
    instead of blocking the open. A symbolic link as the last component is refused
    (``O_NOFOLLOW``) unless ``follow_symlinks``; a link loop is then one line too."""
    path = Path(path)
    named = what if what_names_path else f"{what} {shown(path)}"
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ArtifactError(f"{named}: no such file" if what_names_path else
                            f"{what} not found: {shown(path)}") from None
    except OSError as e:
        if not follow_symlinks and os.path.islink(path):
            raise ArtifactError(f"{named} is a symbolic link; luxc reads only regular "
                                "files") from None
        raise ArtifactError(f"cannot read {named}: {e.strerror}") from None
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        raise ArtifactError(f"{named} is {_KINDS.get(kind, 'a special file')}, not a regular "
                            "file")
    return fd


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


def read_regular(path: str | Path, what: str, max_bytes: int) -> bytearray:
    """The bytes of ``path``, read once; refuses symbolic links, non-regular files and files
    larger than ``max_bytes``."""
    fd = open_regular(path, what)
    try:
        info = os.fstat(fd)
        if info.st_size > max_bytes:
            raise ArtifactError(f"{what} {path} has {info.st_size} bytes, more than the "
                                f"{max_bytes} expected")
        buffer = bytearray(info.st_size)
        view, filled = memoryview(buffer), 0
        while filled < info.st_size:
            n = os.readv(fd, [view[filled:]])
            if n == 0:
                break
            filled += n
        if filled < info.st_size or os.read(fd, 1):
            raise ArtifactError(f"{what} {path} changed size while it was read")
    finally:
        os.close(fd)
    return buffer


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5000-digit ints, nesting
        raise ArtifactError(f"{what} is corrupt (not valid JSON: {type(e).__name__})") from None
