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

from luxc.runtime.errors import ArtifactError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_regular(path: str | Path, what: str, max_bytes: int) -> bytearray:
    """The bytes of ``path``, read once; refuses symbolic links, non-regular files and files
    larger than ``max_bytes``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ArtifactError(f"{what} not found: {path}") from None
    except OSError as e:
        if os.path.islink(path):
            raise ArtifactError(f"{what} {path} is a symbolic link; luxc reads only regular "
                                "files") from None
        raise ArtifactError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{what} {path} is not a regular file")
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
