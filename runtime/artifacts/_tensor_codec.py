"""Arrays to and from safetensors bytes, the tensor format of artifacts and checkpoints.

Decoding checks the header rather than trusting it (a file written by someone else is data).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors.numpy import save

from luxc.runtime.files._bounded_read import parse_json
from luxc.runtime.files._errors import ArtifactError


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
