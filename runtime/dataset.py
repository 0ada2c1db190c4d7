"""A dataset for an artefact's step: arrays of N samples on their leading axis, checked against
the step's data inputs from the ``.npy`` headers alone, then drawn as shuffled batches.

Read from an ``.npz`` (each member's header is read and checked before its data is
decompressed, so a small file declaring a huge array costs nothing) or from a directory of
``.npy`` files, memory-mapped (``np.load(mmap_mode="r")``: a dataset larger than memory trains).
Object arrays are refused; nothing is ever unpickled.

Batches: with N equal to the step's batch B, every step takes the whole dataset in order. With
N > B, epoch ``e`` is the permutation ``np.random.default_rng([seed, e]).permutation(N)`` cut into
``N // B`` batches (the last partial batch dropped, so one executable serves every step): the
batch of step ``i`` (counted from the run's origin) depends only on ``seed`` and ``i``, which is
what lets a resumed run take the same batches in the same order.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from luxc.runtime.errors import ArtifactError

_KINDS = {"b": "booleans", "i": "integers", "u": "unsigned integers", "f": "floats",
          "c": "complex numbers", "V": "raw bytes"}


def npy_header(f: Any, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype in the `.npy` header at `f` (numpy bounds the header size); object
    arrays refused."""
    try:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(f"{what} is not a readable .npy array ({e})") from None
    if dtype.hasobject:
        raise ArtifactError(f"{what} holds Python objects (dtype {dtype}); luxc reads only "
                            "numeric arrays (it never unpickles)")
    return tuple(shape), dtype


def _npz(path: Path) -> tuple[list[tuple[tuple[int, ...], np.dtype]], Any]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"cannot read {path} as .npz: {e}") from None
    # np.savez's order: arr_0, arr_1, ... as given (numerically), or the keyword names as written.
    members = [m for m in archive.namelist() if m.endswith(".npy")]
    headers = []
    for i, member in enumerate(members):
        with archive.open(member) as f:
            headers.append(npy_header(f, f"data[{i}] ({path}:{member[:-4]})"))

    def load() -> list[np.ndarray]:
        out = []
        for member in members:
            with archive.open(member) as f:
                out.append(np.lib.format.read_array(f, allow_pickle=False))
        return out

    return headers, load


def _npy_directory(path: Path) -> tuple[list[tuple[tuple[int, ...], np.dtype]], Any]:
    files = sorted(p for p in path.iterdir() if p.suffix == ".npy")
    if not files:
        raise ArtifactError(f"--data {path} is a directory without .npy files; write one per "
                            "data array (np.save(dir/'0.npy', x), ...; read in name order)")
    headers = []
    for i, p in enumerate(files):
        with open(p, "rb") as f:
            headers.append(npy_header(f, f"data[{i}] ({p})"))
    return headers, lambda: [np.load(p, mmap_mode="r", allow_pickle=False) for p in files]


class Dataset:
    """The arrays of ``path`` checked against ``specs`` (the step's data inputs: ``{"shape",
    "dtype"}``, batch-first) and ``names`` (``data[0]``, ...); ``batch(i)`` is step ``i``'s data."""

    def __init__(self, path: str | Path, specs: list[dict[str, Any]], names: list[str],
                 seed: int = 0):
        path = Path(path)
        if path.is_dir():
            headers, load = _npy_directory(path)
        elif not path.is_file():
            raise ArtifactError(f"data not found: {path}")
        elif path.suffix == ".npy":
            raise ArtifactError(f"--data {path} is one .npy array; give an .npz of the "
                                f"{len(specs)} data arrays (np.savez(F, x, y)) or a directory of "
                                ".npy files, one per array")
        else:
            headers, load = _npz(path)
        self.samples = _check(headers, specs, names, path)
        self.batch_size = specs[0]["shape"][0]
        self.batches_per_epoch = self.samples // self.batch_size
        self.seed = seed
        self._dtypes = [np.dtype(s["dtype"]) for s in specs]
        self._arrays = load()

    def arrays(self) -> list[np.ndarray]:
        """Every sample, as the step's dtypes (an evaluation set: read whole)."""
        return [np.asarray(a, dtype=d) for a, d in zip(self._arrays, self._dtypes)]

    def batch(self, index: int) -> list[np.ndarray]:
        """The data of step ``index`` (0-based, from the run's origin), as the step takes it."""
        if self.samples == self.batch_size:
            return [np.asarray(a, dtype=d) for a, d in zip(self._arrays, self._dtypes)]
        epoch, position = divmod(index, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.samples)
        # Sorted within the batch: memory-mapped rows are then read front to back.
        idx = np.sort(order[position * self.batch_size:(position + 1) * self.batch_size])
        return [np.asarray(a[idx], dtype=d) for a, d in zip(self._arrays, self._dtypes)]


def _check(headers: list[tuple[tuple[int, ...], np.dtype]], specs: list[dict[str, Any]],
           names: list[str], path: Path) -> int:
    if len(headers) != len(specs):
        raise ArtifactError(f"{path} holds {len(headers)} arrays; the step takes {len(specs)} "
                            f"({', '.join(names)})")
    counts = set()
    for name, (shape, dtype), spec in zip(names, headers, specs):
        want = np.dtype(spec["dtype"])
        if len(shape) != len(spec["shape"]) or list(shape[1:]) != spec["shape"][1:] or \
                dtype.kind != want.kind:
            raise ArtifactError(
                f"{name} holds {dtype}{list(shape)}; the step takes {want}[N, "
                + ", ".join(map(str, spec["shape"][1:])) + f"] ({_KINDS.get(want.kind, want)} "
                f"with N samples, N >= the batch {spec['shape'][0]})")
        counts.add(shape[0])
    if len(counts) != 1:
        raise ArtifactError(f"the arrays of {path} hold different numbers of samples "
                            f"({', '.join(f'{n}: {h[0][0]}' for n, h in zip(names, headers))})")
    n, batch = counts.pop(), specs[0]["shape"][0]
    if n < batch:
        raise ArtifactError(f"{path} holds {n} samples; the step's batch is {batch}: give at "
                            f"least {batch}")
    return n
