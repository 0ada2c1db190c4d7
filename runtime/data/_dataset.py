"""A dataset for an artifact's step: arrays of N samples on their leading axis, checked against
the step's data inputs from the ``.npy`` headers alone, then drawn as shuffled batches.

Read from a directory of ``.npy`` files (one per data array, in name order) or from an ``.npz``.
A ``.npy`` file, and an ``.npz`` member stored uncompressed (``np.savez``), is read per batch
(:class:`~luxc.runtime.data._npy_rows.NpyRows`: ``pread`` of the batch's rows, so a dataset larger
than memory trains and a file truncated during the run is one line, not SIGBUS). A compressed
member (``np.savez_compressed``) cannot be read by rows: it is inflated whole, once.

Bounds (a dataset may come from someone else): what luxc must hold in memory — the inflated
members, the epoch's permutation (8 bytes a sample while it is drawn) and, for an evaluation
set, every sample — is at most ``max_memory`` bytes (:data:`DEFAULT_MAX_MEMORY`), checked from
the headers before anything is inflated or allocated. Every file is opened without blocking and
checked to be a regular file on its descriptor; a symbolic link inside a data directory is
refused unless ``follow_symlinks``. Object arrays are refused; nothing is ever unpickled.

Batches: with N equal to the step's batch B, every step takes the whole dataset in order. With
N > B, epoch ``e`` is the permutation ``np.random.default_rng([seed, e]).permutation(N)`` cut into
``N // B`` batches (the last partial batch dropped, so one executable serves every step): the
batch of step ``i`` (counted from the run's origin) depends only on ``seed`` and ``i``, which is
what lets a resumed run take the same batches in the same order. The permutation is drawn once
per epoch and kept, so a step costs O(B).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from luxc.runtime.data._npy_rows import (
    ArrayRows,
    NpyHeader,
    NpyRows,
    byte_size,
    cast,
    check_rows,
    open_npy,
    read_npy_header,
)
from luxc.runtime.files._bounded_read import open_regular
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown

if TYPE_CHECKING:
    from luxc.runtime.artifacts import ArraySpec

DEFAULT_MAX_MEMORY = 512 << 20
_KINDS = {"b": "booleans", "i": "integers", "u": "unsigned integers", "f": "floats",
          "c": "complex numbers", "V": "raw bytes"}
Rows = NpyRows | ArrayRows


class _Source(NamedTuple):
    """One data array of a dataset: its header, name in errors, the bytes inflating it costs
    (0 when read per batch) and how to open it."""

    header: NpyHeader
    what: str
    inflated: int
    open: Callable[[], Rows]


class Dataset:
    """The arrays of ``path`` checked against ``specs`` (the step's data inputs, the manifest's
    :class:`~luxc.runtime.artifacts.ArraySpec`, batch-first) and ``names`` (``data[0]``, ...);
    ``batch(i)`` is step ``i``'s data.

    ``evaluation=True``: a set read whole by :meth:`arrays` (any N >= 1, no shuffling)."""

    def __init__(self, path: str | Path, specs: Sequence[ArraySpec], names: list[str],
                 seed: int = 0, *, evaluation: bool = False, follow_symlinks: bool = False,
                 max_memory: int = DEFAULT_MAX_MEMORY):
        path = Path(path)
        sources = _sources(path, specs, names, follow_symlinks)
        self.samples = _check(sources, specs, names, path, 1 if evaluation else None)
        self.batch_size = specs[0].shape[0]
        self.batches_per_epoch = self.samples // self.batch_size
        self.seed = seed
        self._dtypes = [np.dtype(s.dtype) for s in specs]
        self._names = [s.what for s in sources]
        if evaluation:  # read whole, as the step's dtypes
            needs = {"every sample": self.samples * sum(
                d.itemsize * math.prod(s.header.shape[1:]) for s, d in zip(sources, self._dtypes))}
        else:  # drawn as int64, then kept smaller
            needs = {"the epoch's permutation":
                     8 * self.samples if self.samples > self.batch_size else 0}
        _check_memory(path, sources, needs, max_memory)
        self._rows = [s.open() for s in sources]
        self._epoch: int | None = None
        self._order = np.empty(0, np.uint8)

    def arrays(self) -> list[np.ndarray]:
        """Every sample, as the step's dtypes (an evaluation set: read whole)."""
        return [cast(r.all(), d, n) for r, d, n in zip(self._rows, self._dtypes, self._names)]

    def batch(self, index: int) -> list[np.ndarray]:
        """The data of step ``index`` (0-based, from the run's origin), as the step takes it."""
        if self.samples == self.batch_size:
            return self.arrays()
        epoch, position = divmod(index, self.batches_per_epoch)
        if epoch != self._epoch:
            self._order, self._epoch = epoch_order(self.seed, epoch, self.samples), epoch
        # Sorted within the batch: rows are then read front to back, runs in one read.
        idx = np.sort(self._order[position * self.batch_size:(position + 1) * self.batch_size])
        return [cast(r.rows(idx), d, n) for r, d, n in zip(self._rows, self._dtypes, self._names)]


def epoch_order(seed: int, epoch: int, samples: int) -> np.ndarray:
    """The order of the samples in ``epoch``: ``default_rng([seed, epoch]).permutation(samples)``,
    kept in the smallest unsigned integer type that holds it."""
    order = np.random.default_rng([seed, epoch]).permutation(samples)
    return order.astype(np.min_scalar_type(max(samples - 1, 0)))


def _sources(path: Path, specs: Sequence[ArraySpec], names: list[str],
             follow_symlinks: bool) -> list[_Source]:
    if path.is_dir():
        return _npy_directory(path, specs, names, follow_symlinks)
    if path.suffix == ".npy":
        raise ArtifactError(f"{shown(path)} is one .npy array; give an .npz of the {len(specs)} "
                            "data arrays (np.savez(F, x, y)) or a directory of .npy files, one "
                            "per array")
    return _npz(path, specs, names)


def _count(found: int, specs: Sequence[ArraySpec], names: list[str], path: Path) -> None:
    if found != len(specs):
        raise ArtifactError(f"{shown(path)} holds {found} arrays; the step takes {len(specs)} "
                            f"({', '.join(shown(n, 100) for n in names)})")


def _npy_directory(path: Path, specs: Sequence[ArraySpec], names: list[str],
                   follow_symlinks: bool) -> list[_Source]:
    files = sorted(p for p in path.iterdir() if p.suffix == ".npy")
    if not files:
        raise ArtifactError(f"{shown(path)} is a directory without .npy files; write one per "
                            "data array (np.save(dir/'0.npy', x), ...; read in name order)")
    _count(len(files), specs, names, path)
    sources = []
    for i, p in enumerate(files):
        what = f"data[{i}] ({shown(p)})"
        if p.is_symlink() and not follow_symlinks:
            raise ArtifactError(f"{what} is a symbolic link; luxc follows no link inside a data "
                                "directory unless asked (follow_symlinks=True: only if you trust "
                                "where it points)")
        rows = open_npy(p, what, follow_symlinks=follow_symlinks)
        sources.append(_Source(rows.header, what, 0, lambda rows=rows: rows))
    return sources


def _npz(path: Path, specs: Sequence[ArraySpec], names: list[str]) -> list[_Source]:
    file = io.FileIO(open_regular(path, "data", follow_symlinks=True), "rb")
    try:
        archive = zipfile.ZipFile(file)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"cannot read {shown(path)} as .npz: {shown(e)}") from None
    # np.savez's order: arr_0, arr_1, ... as given (numerically), or the keyword names as written.
    members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
    _count(len(members), specs, names, path)
    size = os.fstat(file.fileno()).st_size
    sources = []
    for i, member in enumerate(members):
        what = f"data[{i}] ({shown(path)}:{shown(member.filename[:-4], 200)})"
        try:
            with archive.open(member) as f:
                header = read_npy_header(f, what)
                header_bytes = f.tell()
        except (RuntimeError, NotImplementedError, zlib.error, zipfile.BadZipFile, OSError,
                EOFError) as e:  # encrypted, an unknown method, a bad entry
            raise ArtifactError(f"cannot read {what}: {shown(e)}") from None
        if member.compress_type == zipfile.ZIP_STORED:
            start = _member_start(file, member, what) + header_bytes
            rows = NpyRows(file, start, header, min(member.file_size - header_bytes,
                                                    size - start), what)
            sources.append(_Source(header, what, 0, lambda rows=rows: rows))
        else:
            sources.append(_Source(header, what, header.nbytes, lambda m=member, h=header,
                                   w=what: ArrayRows(_inflate(archive, m, h, w))))
    return sources


def _member_start(file: io.FileIO, member: zipfile.ZipInfo, what: str) -> int:
    """Where the data of a stored member starts: after its local header (whose name and extra
    field lengths may differ from the central directory's)."""
    local = os.pread(file.fileno(), 30, member.header_offset)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ArtifactError(f"{what} is corrupt (its zip entry is not where the archive says)")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return member.header_offset + 30 + name_length + extra_length


def _inflate(archive: zipfile.ZipFile, member: zipfile.ZipInfo, header: NpyHeader,
             what: str) -> np.ndarray:
    """The compressed ``member``'s array (its size already within the memory bound)."""
    check_rows(header, what)
    out = np.empty(header.shape, header.dtype)
    view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
    try:
        with archive.open(member) as f:
            read_npy_header(f, what)
            while done < len(view):
                n = f.readinto(view[done:done + (16 << 20)])
                if not n:
                    break
                done += n
    except (EOFError, OSError, zlib.error, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{what} is truncated or corrupt ({shown(e)}); write the .npz "
                            "again") from None
    if done < len(view):
        raise ArtifactError(f"{what} is truncated: its header declares {header.dtype}"
                            f"{list(header.shape)} ({byte_size(header.nbytes)}), its data holds "
                            f"{byte_size(done)}; write the .npz again")
    return out


def _check(sources: list[_Source], specs: Sequence[ArraySpec], names: list[str], path: Path,
           min_samples: int | None) -> int:
    counts, least = set(), min_samples or f"the batch {specs[0].shape[0]}"
    for name, source, spec in zip(names, sources, specs):
        (shape, dtype, _), want = source.header, np.dtype(spec.dtype)
        if len(shape) != len(spec.shape) or tuple(shape[1:]) != spec.shape[1:] or \
                dtype.kind != want.kind:
            want_shape = ", ".join(["N", *map(str, spec.shape[1:])])
            raise ArtifactError(f"{shown(name, 100)} holds {dtype}{list(shape)}; the step takes "
                                f"{want}[{want_shape}] ({_KINDS.get(want.kind, want)} with N "
                                f"samples, N >= {least})")
        counts.add(shape[0])
    if len(counts) != 1:
        raise ArtifactError(f"the arrays of {shown(path)} hold different numbers of samples ("
                            + ", ".join(f"{shown(n, 100)}: {s.header.shape[0]}"
                                        for n, s in zip(names, sources)) + ")")
    n, batch = counts.pop(), specs[0].shape[0]
    if n < (min_samples or batch):
        raise ArtifactError(f"{shown(path)} holds {n} samples; " + (
            f"the step's batch is {batch}: give at least {batch}" if min_samples is None else
            f"give at least {min_samples}"))
    return n


def _check_memory(path: Path, sources: list[_Source], needs: dict[str, int],
                  max_memory: int) -> None:
    parts = {**{f"{s.what} inflated (compressed)": s.inflated for s in sources}, **needs}
    total = sum(parts.values())
    if total > max_memory:
        largest = max(parts, key=parts.get)
        raise ArtifactError(
            f"{shown(path)} needs {byte_size(total)} of memory (largest part: {largest}, "
            f"{byte_size(parts[largest])}), more than the {byte_size(max_memory)} luxc allows a "
            "dataset: raise the limit (max_memory=, in bytes) if you trust it"
            + (", or save it with np.savez (uncompressed members are read per batch)"
               if "inflated" in largest else ""))
