"""Files on disk: atomic writes, bounded reads, SHA-256 checksums and tensor files (safetensors).

Nothing already on disk is lost to a failed write: every file is written to a temporary file in
the same directory and renamed over the target only when complete. Temporary names carry the
writer's process id, so the next write to the same path can remove the leftovers of a writer that
was killed (and only those: a live writer's temporary, or a file luxc did not name, is never
touched).

Reads go through :func:`read_regular`: one ``open`` that refuses symbolic links and anything but
a regular file, a size bound checked before reading, and the bytes returned, so a check (a hash)
and the use of the file see the same bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save


class ArtifactError(RuntimeError):
    """A file luxc wrote cannot be used: missing, corrupt, tampered with or incompatible."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.luxc-{os.getpid()}-{secrets.token_hex(6)}.tmp")


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.luxc-(?P<pid>\d+)-[0-9a-f]{12}\.(?P<kind>tmp|partial|old)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries that killed writers left next to ``path`` (files, and the
    directories of an artefact being written or replaced); return them."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in candidates:
        m = _TEMPORARY.fullmatch(p.name)
        if m is None or m["name"] != path.name:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            info = os.lstat(p)
            if info.st_uid != os.getuid():
                continue
            if m["kind"] == "tmp" and stat.S_ISREG(info.st_mode):
                p.unlink()
            elif m["kind"] != "tmp" and stat.S_ISDIR(info.st_mode):
                shutil.rmtree(p)
            else:
                continue
            removed.append(p)
        except OSError:
            continue
    return removed


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the new one.

    The new file gets the permissions of a plain ``open`` (0666 less the umask), which the
    kernel applies: luxc never reads or changes the process umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_regular(path: str | Path, what: str, max_bytes: int) -> bytes:
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
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise ArtifactError(f"{what} {path} grew past the {max_bytes} bytes expected while read")
    return data


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} is corrupt (not valid JSON: {e})") from None


def tensor_bytes(arrays: Sequence[Any], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of ``arrays``, named ``00000``, ``00001``… in order."""
    # np.asarray(order="C"), not np.ascontiguousarray: the latter turns 0-d arrays into (1,).
    named = {f"{i:05d}": np.asarray(jax.device_get(a), order="C") for i, a in enumerate(arrays)}
    return save(named, metadata=metadata)


def tensors_from_bytes(data: bytes, what: str) -> tuple[list[np.ndarray], dict[str, str]]:
    """The arrays of bytes written by :func:`tensor_bytes`, in order, and the metadata."""
    try:
        (header_size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_size]) if header_size <= len(data) - 8 else None
        if not isinstance(header, dict):
            raise ValueError("bad header")
        named = load(data)
    except (SafetensorError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} is corrupt ({e})") from None
    metadata = header.get("__metadata__") or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ArtifactError(f"{what} is corrupt (its metadata is not a table of strings)")
    return [named[k] for k in sorted(named)], metadata


def describe(arrays: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype if not hasattr(a, "dtype")
                                                     else a.dtype)} for a in arrays]


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


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or file system has no such call."""
    import ctypes

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
    old = out.with_name(f".{out.name}.luxc-{os.getpid()}-{secrets.token_hex(6)}.old")
    out.rename(old)
    new.rename(out)
    return old
