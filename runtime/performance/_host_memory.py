"""Keep the host memory a step frees, so the next step does not fault it in again.

XLA:CPU allocates a step's temporaries on every call and frees them when it ends. glibc's
``malloc`` hands large blocks back to the kernel: a block over its mmap threshold (32 MiB at
most, and any block over 64 MiB asked for from a worker thread, which is where XLA:CPU runs a
step) is unmapped on ``free``, and the free top of a thread's heap is trimmed. The next step
maps the memory afresh and the kernel zeroes every page of it on first touch: a 4-block
character GPT (batch 32, context 128, width 128) took 88k minor page faults and 137 ms of
kernel time in a 221 ms step.

:func:`retain_host_memory` changes three of glibc's ``malloc`` settings for the whole process
(``mallopt``): no block is served by ``mmap`` (``M_MMAP_MAX = 0``), freed memory at the top of
a heap is never trimmed (``M_TRIM_THRESHOLD``), and a thread's heap keeps a pad large enough
that glibc never deletes it (``M_TOP_PAD``). Freed blocks then stay in the process and the
next step reuses them: that step took 158 ms with no page faults. The price is that the
process keeps its peak memory until it exits, as a caching allocator does. The same settings
from the shell, before Python starts::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=134217728 python train.py

luxc never calls this behind your back (``import luxc``, the training API and the ``luxc``
command change nothing process-wide unless asked: ``luxc --retain-host-memory run ...``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses

__all__ = ["RetainedMemory", "glibc_version", "retain_host_memory"]

# glibc's malloc.h parameter numbers (stable since glibc 2.0 / 2.10).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_SETTINGS = (
    ("M_MMAP_MAX", _M_MMAP_MAX, 0),
    ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, 2**31 - 1),
    # glibc deletes a thread's emptied heap (64 MiB each) unless the pad exceeds what it would
    # give back; twice the heap size always does.
    ("M_TOP_PAD", _M_TOP_PAD, 128 * 2**20),
)


@dataclasses.dataclass(frozen=True)
class RetainedMemory:
    """What :func:`retain_host_memory` did: ``applied`` is False where the C library is not
    glibc (musl, macOS, Windows), with ``reason`` saying so. With ``one_arena=True``,
    ``other_arenas`` counts the heaps threads had already made before the call (glibc keeps
    them and may hand one to a thread started later); ``reason`` then says how to avoid them."""

    applied: bool
    settings: dict[str, int]
    reason: str = ""
    other_arenas: int = 0


def _glibc():
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None, ""
    return libc, version


def _arena_count(libc) -> int | None:
    """How many malloc arenas the process has (``malloc_info``'s ``<heap>`` elements), or None
    if glibc cannot say."""
    buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
    try:
        libc.open_memstream.restype = ctypes.c_void_p
        libc.open_memstream.argtypes = (ctypes.POINTER(ctypes.c_void_p),
                                        ctypes.POINTER(ctypes.c_size_t))
        libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc.fclose.argtypes = (ctypes.c_void_p,)
        libc.free.argtypes = (ctypes.c_void_p,)
        stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    except AttributeError:
        return None
    if not stream:
        return None
    failed = libc.malloc_info(0, stream) != 0
    libc.fclose(stream)
    text = ctypes.string_at(buffer, size.value) if buffer.value else b""
    libc.free(buffer)
    return None if failed else text.count(b"<heap nr=")


def glibc_version() -> str | None:
    """glibc's version (``"2.36"``), or None under another C library; changes nothing."""
    return _glibc()[1] or None


def retain_host_memory(*, one_arena: bool = False) -> RetainedMemory:
    """Make ``malloc`` keep freed host memory for reuse, for the rest of this process.

    Call it once, before or after compiling; it acts on every later allocation of every
    thread. Worth it for steps whose temporaries run to tens of MiB (``luxc profile`` shows
    *page faults* per step), and only for them: a small step can get slower (LeNet-5 at batch
    128: 3.8 → 4.9 ms). A process that must give memory back while it runs should not call it.

    glibc still maps a block over 64 MiB afresh when a thread other than the main one asks
    for it, which is how XLA:CPU allocates a step's temporaries when they form one heap (an
    executable read from an artifact or the persistent cache). ``one_arena=True`` also puts
    every thread created afterwards on the main heap (``M_ARENA_MAX = 1``), which keeps those
    too; call it before the first computation starts XLA's worker threads. A heap another
    thread made before the call stays, and glibc may give it to a thread started later (a
    thread that ended leaves its heap to the next one): the result's ``other_arenas`` counts
    them. ``MALLOC_ARENA_MAX=1`` in the environment, before Python starts, has none.

    Returns what was set; on a C library other than glibc it changes nothing.

    Example::

        >>> import luxc
        >>> luxc.retain_host_memory().applied   # on Linux with glibc
        True
    """
    libc, version = _glibc()
    if libc is None:
        return RetainedMemory(False, {}, "the C library is not glibc: nothing to change")
    settings = {}
    one = (("M_ARENA_MAX", _M_ARENA_MAX, 1),) if one_arena else ()
    for name, parameter, value in _SETTINGS + one:
        if libc.mallopt(parameter, value) != 1:
            return RetainedMemory(False, settings, f"glibc {version} refused mallopt({name})")
        settings[name] = value
    others = max((_arena_count(libc) or 1) - 1, 0) if one_arena else 0
    if others:
        return RetainedMemory(True, settings, (
            f"{others} malloc heap(s) made by threads before this call remain and may serve a "
            "later thread; for one heap set MALLOC_ARENA_MAX=1 before Python starts"), others)
    return RetainedMemory(True, settings)
