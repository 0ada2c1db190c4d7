"""Files on disk: atomic writes, SHA-256 checksums and tensor files (safetensors).

Nothing already on disk is lost to a failed write: every file is written to a temporary file in
the same directory and renamed over the target only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save


class ArtifactError(RuntimeError):
    """A file luxc wrote cannot be used: missing, corrupt, tampered with or incompatible."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dir_public(path: str | Path) -> None:
    """``mkdtemp`` makes 0700 directories; give the permissions a plain ``mkdir`` would."""
    os.chmod(path, 0o777 & ~_umask())


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} {path} is corrupt (not valid JSON: {e})") from None


def tensor_bytes(arrays: Sequence[Any], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of ``arrays``, named ``00000``, ``00001``… in order."""
    # np.asarray(order="C"), not np.ascontiguousarray: the latter turns 0-d arrays into (1,).
    named = {f"{i:05d}": np.asarray(jax.device_get(a), order="C") for i, a in enumerate(arrays)}
    return save(named, metadata=metadata)


def read_tensors(path: str | Path, what: str) -> tuple[list[np.ndarray], dict[str, str]]:
    """The arrays of a file written by :func:`tensor_bytes`, in order, and its metadata."""
    try:
        with safe_open(str(path), "np") as f:
            keys = sorted(f.keys())
            return [f.get_tensor(k) for k in keys], dict(f.metadata() or {})
    except FileNotFoundError:
        raise ArtifactError(f"{what} not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{what} {path} is corrupt ({e})") from None


def describe(arrays: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype if not hasattr(a, "dtype")
                                                     else a.dtype)} for a in arrays]
