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
import ml_dtypes
import numpy as np
from safetensors.numpy import save


class ArtifactError(RuntimeError):
    """A file luxc wrote cannot be used: missing, corrupt, tampered with or incompatible."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.luxc-{os.getpid()}-{secrets.token_hex(6)}.tmp")


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.luxc-(?P<pid>\d+)-[0-9a-f]{12}\.(?P<kind>tmp|partial|old)")


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


# A stale directory is removed only if it holds nothing but what luxc writes there: files of
# the artefact format and luxc's own temporaries.
_LUXC_DIRECTORY_ENTRIES = re.compile(
    r"manifest\.json|manifest\.sig|step\.jaxexport|step\.mlir|executable\.bin|"
    r"state\.safetensors|data\.safetensors|\..+\.luxc-\d+-[0-9a-f]{12}\.tmp")


def holds_only_luxc_files(directory: Path) -> bool:
    """Whether every entry of ``directory`` is a regular file luxc writes into an artefact."""
    try:
        return all(_LUXC_DIRECTORY_ENTRIES.fullmatch(p.name) and not p.is_symlink() and p.is_file()
                   for p in directory.iterdir())
    except OSError:
        return False


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
        try:
            info = os.lstat(p)
            pid = int(m["pid"])
            if info.st_uid != os.getuid() or pid == os.getpid() or _alive(pid):
                continue
            if m["kind"] == "tmp" and stat.S_ISREG(info.st_mode):
                p.unlink()
            elif m["kind"] != "tmp" and stat.S_ISDIR(info.st_mode) and holds_only_luxc_files(p):
                shutil.rmtree(p)
            else:
                continue
            removed.append(p)
        except OSError:
            continue
    return removed


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the new one.

    The new file is created with ``mode`` less the umask (by default the permissions of a
    plain ``open``), which the kernel applies: luxc never reads or changes the process umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5000-digit ints, nesting
        raise ArtifactError(f"{what} is corrupt (not valid JSON: {type(e).__name__})") from None


def tensor_bytes(arrays: Sequence[Any], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of ``arrays``, named ``00000``, ``00001``… in order."""
    # np.asarray(order="C"), not np.ascontiguousarray: the latter turns 0-d arrays into (1,).
    named = {f"{i:05d}": np.asarray(jax.device_get(a), order="C") for i, a in enumerate(arrays)}
    return save(named, metadata=metadata)


# safetensors dtype names (the format's own) and their numpy dtypes, ml_dtypes' included.
_SAFETENSORS_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64, "F16": np.float16,
    "F32": np.float32, "F64": np.float64, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "C64": np.complex64, "C128": np.complex128,
}
_MAX_TENSORS = 1 << 20


def tensors_from_bytes(data: bytes | bytearray, what: str) -> tuple[list[np.ndarray],
                                                                    dict[str, str]]:
    """The arrays of bytes written by :func:`tensor_bytes`, in order, and the metadata.

    The safetensors header is checked here, not trusted: every tensor's dtype is a known one,
    its byte range lies inside the data, matches its shape, and overlaps no other."""
    if len(data) < 8:
        raise ArtifactError(f"{what} is corrupt (shorter than a safetensors header)")
    (header_size,) = struct.unpack("<Q", bytes(data[:8]))
    if header_size > len(data) - 8:
        raise ArtifactError(f"{what} is corrupt (its header runs past the end of the file)")
    header = parse_json(bytes(data[8:8 + header_size]), what)
    if not isinstance(header, dict) or len(header) > _MAX_TENSORS:
        raise ArtifactError(f"{what} is corrupt (its header is not a table of tensors)")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ArtifactError(f"{what} is corrupt (its metadata is not a table of strings)")
    body = memoryview(data)[8 + header_size:]
    arrays, ranges = {}, []
    for name, entry in header.items():
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
            if any(d < 0 for d in shape) or not 0 <= begin <= end <= len(body) or \
                    end - begin != int(np.prod(shape, dtype=object)) * dtype.itemsize:
                raise ValueError
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ArtifactError(f"{what} is corrupt (tensor {name!r} is malformed)") from None
        ranges.append((begin, end))
        arrays[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
    ranges.sort()
    if any(a_end > b_begin for (_, a_end), (b_begin, _) in zip(ranges, ranges[1:])):
        raise ArtifactError(f"{what} is corrupt (two tensors share bytes)")
    return [arrays[k] for k in sorted(arrays)], metadata


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
