"""A ``.npy`` array read by rows: its header checked against the bytes the file holds, then any
rows copied out with ``pread``, a batch at a time — never memory-mapped, never unpickled.

Why not ``np.load(mmap_mode="r")``: a mapped file that shrinks while it is read (another process
truncates it) kills the reader with SIGBUS, a signal Python cannot turn into an error. A
``pread`` past the end returns short instead, which is one line naming the file. Memory holds the
rows asked for, not the file: ``rows(idx)`` of an ``(N, *row)`` array is ``(len(idx), *row)``.

The array may start anywhere in its file: at the end of its header in a ``.npy`` file, or inside
a member of an ``.npz`` stored uncompressed (``np.savez``). :class:`ArrayRows` gives the same
interface over an array already in memory (an inflated ``np.savez_compressed`` member).
"""

from __future__ import annotations

import io
import itertools
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from luxc.runtime.files._bounded_read import open_regular
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown


class NpyHeader(NamedTuple):
    """What a ``.npy`` header declares: ``shape``, ``dtype``, and whether the data is in Fortran
    order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        """The bytes of data declared: ``prod(shape) * itemsize`` (exact, never overflows)."""
        return math.prod(self.shape) * self.dtype.itemsize


def byte_size(n: int) -> str:
    """``n`` bytes for a person: ``"256 GiB"``, ``"1.5 MiB"``, ``"12 bytes"``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def read_npy_header(f: Any, what: str) -> NpyHeader:
    """The header of the ``.npy`` data at the position of the binary file ``f`` (numpy bounds
    its size), which is left at the first byte of the array's data; object arrays refused."""
    try:
        version = np.lib.format.read_magic(f)
        shape, fortran_order, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(f"{what} is not a readable .npy array ({shown(e)})") from None
    if any(n < 0 for n in shape):
        raise ArtifactError(f"{what} is corrupt: its header declares the shape {list(shape)}, "
                            "with a negative length; write it again (np.save)")
    if dtype.hasobject:
        raise ArtifactError(f"{what} holds Python objects (dtype {dtype}); luxc reads only "
                            "numeric arrays (it never unpickles)")
    return NpyHeader(tuple(shape), dtype, bool(fortran_order))


def check_rows(header: NpyHeader, what: str) -> None:
    """Refuse an array that cannot be read by rows: one number (no sample axis), or data in
    Fortran order (a row is then scattered through the file)."""
    if not header.shape:
        raise ArtifactError(f"{what} holds a single number (shape []); give an array with the "
                            "samples on its leading axis")
    if header.fortran_order and len(header.shape) > 1:
        raise ArtifactError(f"{what} is stored in Fortran order; save it in C order "
                            "(np.save(F, np.ascontiguousarray(x)))")


class NpyRows:
    """The rows of the array declared by ``header``, whose data starts at ``offset`` in the open
    binary ``file`` and may use ``available`` bytes there; ``what`` names it in errors."""

    def __init__(self, file: io.FileIO, offset: int, header: NpyHeader, available: int,
                 what: str):
        check_rows(header, what)
        if header.nbytes > available:
            raise ArtifactError(
                f"{what} is truncated: its header declares {header.dtype}{list(header.shape)} "
                f"({byte_size(header.nbytes)}) but the file holds {byte_size(max(available, 0))} "
                "of data; write it again (np.save)")
        self._file, self._offset, self.header, self.what = file, offset, header, what
        self.shape, self.dtype = header.shape, header.dtype
        self._row_bytes = math.prod(header.shape[1:]) * header.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (ascending), ``(len(idx), *shape[1:])``: one ``pread`` per run of
        consecutive indices."""
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if out.size:
            idx = np.asarray(idx, dtype=np.int64)
            cuts = [0, *(np.flatnonzero(np.diff(idx) != 1) + 1).tolist(), len(idx)]
            view, row = memoryview(out.reshape(-1).view(np.uint8)), self._row_bytes
            for a, b in zip(cuts, cuts[1:]):
                self._read_into(view[a * row:b * row], self._offset + int(idx[a]) * row)
        return out

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (exclusive)."""
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        if out.size:
            self._read_into(memoryview(out.reshape(-1).view(np.uint8)),
                            self._offset + start * self._row_bytes)
        return out

    def all(self) -> np.ndarray:
        return self.slice(0, len(self))

    def _read_into(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            try:
                n = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            except OSError as e:
                raise ArtifactError(f"cannot read {self.what}: {e.strerror}") from None
            if n == 0:
                raise ArtifactError(f"{self.what} became shorter while luxc read it (another "
                                    "program truncated or rewrote it); restore the file and run "
                                    "again")
            done += n


class ArrayRows:
    """:class:`NpyRows`' interface over ``array``, already in memory."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.array[idx]

    def slice(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def all(self) -> np.ndarray:
        return self.array


def cast(a: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """``a`` as the step's ``dtype`` (the same kind, checked from the header), refusing a value
    the cast would change: an integer out of ``dtype``'s range (int64 ``2**32 + 5`` would
    become int32 ``5``), a finite float that overflows to inf."""
    out = np.asarray(a, dtype=dtype) if a.dtype.kind not in "fc" else _float_cast(a, dtype)
    if a.dtype.kind in "iu" and out.size and not np.can_cast(a.dtype, dtype):
        info = np.iinfo(dtype)
        low, high = int(a.min()), int(a.max())
        if low < info.min or high > info.max:
            raise ArtifactError(f"{what} holds {low if low < info.min else high}, out of the "
                                f"step's {dtype} range [{info.min}, {info.max}]; fix the data "
                                "(or save it as the step's dtype)")
    elif a.dtype.kind in "fc" and out.size and not np.can_cast(a.dtype, dtype) and \
            np.count_nonzero(np.isinf(out)) != np.count_nonzero(np.isinf(a)):
        raise ArtifactError(f"{what} holds values beyond {dtype}'s range (as {dtype} they "
                            "would be inf); fix the data (or save it as the step's dtype)")
    return out


def _float_cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    with np.errstate(over="ignore"):  # an overflow is refused by the caller, in its terms
        return np.asarray(a, dtype=dtype)


def open_npy(path: str | Path, what: str, *, follow_symlinks: bool) -> NpyRows:
    """The ``.npy`` file at ``path`` as :class:`NpyRows`: a regular file (a FIFO, a device, a
    directory or, unless ``follow_symlinks``, a symbolic link is refused) whose size holds the
    data its header declares."""
    file = io.FileIO(open_regular(path, what, follow_symlinks=follow_symlinks,
                                  what_names_path=True), "rb")
    header = read_npy_header(file, what)
    offset = file.tell()
    return NpyRows(file, offset, header, os.fstat(file.fileno()).st_size - offset, what)


def npy_chunks(samples: int, batches: Iterator[np.ndarray], what: str) -> Iterator[bytes]:
    """The bytes of the ``.npy`` file of ``samples`` rows that ``batches`` yields in order
    (each ``(b, *row)``, the same ``row`` and dtype): the header first, then each batch as it
    comes, so a writer holds one batch at a time."""
    first = next(batches)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
        "shape": (samples, *first.shape[1:])})
    yield header.getvalue()
    written = 0
    for y in itertools.chain([first], batches):
        if y.shape[1:] != first.shape[1:] or y.dtype != first.dtype:
            raise ArtifactError(f"{what}: a batch gave {y.dtype}{list(y.shape)}, the first "
                                f"{first.dtype}{list(first.shape)}")
        written += len(y)
        yield np.ascontiguousarray(y).tobytes()
    if written != samples:
        raise ArtifactError(f"{what}: {written} rows written, {samples} expected")
