"""``luxc run --log FILE``: one JSON object a line, on disk before each checkpoint, and only
ever appended to the log of the run being resumed.

Rows go straight to the file (``os.write``, nothing held in the process), and each checkpoint
first ``fsync``\\ s the log and records its length and SHA-256 in the checkpoint's run record
(:mod:`luxc.cli.run_checkpoints`). A run killed with SIGKILL after a checkpoint has therefore
lost no row before it, and ``--resume --log FILE`` reopens FILE only when its first bytes are
exactly what that checkpoint recorded (any other file is refused: luxc never rewrites a file it
did not write), then cuts it back to that length, so log and checkpoint agree and the resumed
run writes the later rows again. A write that fails (a full disk) is cut back to the last whole
row and stops the run, which still saves its state.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any

from luxc.cli._common import CliError
from luxc.cli.run_outputs import check_outside
from luxc.runtime.files._atomic_write import check_writable_file, write_all

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def check_log(path: str, artifact: str, resume: bool) -> None:
    """Refuse, before any work, a ``--log`` luxc would not write: inside the artifact, not a
    regular file (a device, a FIFO, a directory, a symbolic link), or existing in a fresh run."""
    check_outside(path, artifact, "--log")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise CliError(f"--log {path}: {e.strerror}") from None
    if mode is not None:
        kind = next((name for test, name in _KINDS if test(mode)), None)
        if kind is not None or not stat.S_ISREG(mode):
            raise CliError(f"--log {path} is {kind or 'not a regular file'}; luxc writes its "
                           "log to a regular file of its own: give a file name")
        if not resume:
            raise CliError(f"--log {path} already exists; luxc does not overwrite it: remove "
                           "it yourself or choose another name")
    check_writable_file(path, "--log")


class RunLog:
    """The open ``--log``: ``write(row)`` appends a row, ``sync()`` puts it on disk and gives
    the record a checkpoint keeps; ``error`` is the failed write (the run then stops)."""

    def __init__(self, path: str, fd: int, digest: Any, size: int):
        self.path, self._fd, self._digest, self._size = path, fd, digest, size
        self.error: OSError | None = None
        self.last_step: int | None = None
        info = os.fstat(fd)
        self._file = [info.st_dev, info.st_ino]  # names the log while it has no row

    @classmethod
    def open(cls, path: str, recorded: dict[str, Any] | None, resume: bool) -> RunLog:
        """A new log at ``path``, or (``resume``, the file exists) the resumed run's log, cut
        back to the ``recorded`` length of its checkpoint."""
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o666)
            return cls(path, fd, hashlib.sha256(), 0)
        except FileExistsError:
            if not resume:
                raise CliError(f"--log {path} already exists; luxc does not overwrite it: "
                               "remove it yourself or choose another name") from None
        except OSError as e:
            raise CliError(f"--log {path}: cannot create it ({e.strerror})") from None
        try:
            fd = os.open(path, os.O_RDWR | flags)
        except OSError as e:
            raise CliError(f"--log {path}: cannot open it ({e.strerror}); luxc writes its log "
                           "to a regular file of its own") from None
        digest = _verified_prefix(fd, recorded)
        if digest is None:
            os.close(fd)
            raise CliError(f"--log {path} already exists and is not the log of the run being "
                           "resumed (luxc appends only to the log its run wrote, as far as its "
                           "checkpoint); give a new file name")
        os.ftruncate(fd, recorded["bytes"])
        os.lseek(fd, 0, os.SEEK_END)
        return cls(path, fd, digest, recorded["bytes"])

    def write(self, row: dict[str, Any]) -> None:
        if self.error is not None:
            return
        data = (json.dumps(row) + "\n").encode()
        try:
            write_all(self._fd, data)
        except OSError as e:
            self._failed(e)
            return
        self._digest.update(data)
        self._size += len(data)
        self.last_step = row.get("step", self.last_step)

    def sync(self) -> dict[str, Any]:
        """Put every row on disk; the log's record for a checkpoint written now."""
        if self.error is None and self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError as e:
                self._failed(e)
        return {"bytes": self._size, "sha256": self._digest.hexdigest(), "file": self._file}

    def _failed(self, error: OSError) -> None:
        self.error = error
        try:  # a partial row is cut off: the file ends with the last whole one
            os.ftruncate(self._fd, self._size)
        except OSError:
            pass

    def failure(self) -> str:
        """One line saying what failed, for the end of a run ``error`` stopped."""
        kept = f"the rows up to step {self.last_step}" if self.last_step else "no row"
        return (f"--log {self.path}: could not write ({self.error.strerror or self.error}); "
                f"it keeps {kept}")

    def close(self) -> None:
        """Put every row on disk and close the file (``sync`` still gives its record)."""
        self.sync()
        os.close(self._fd)
        self._fd = -1


def _verified_prefix(fd: int, recorded: dict[str, Any] | None) -> Any:
    """The SHA-256 state of the first ``recorded["bytes"]`` bytes of the regular file ``fd``
    when they hash to ``recorded["sha256"]``, else ``None``. A log that had no row at the
    checkpoint is matched by its file (device and inode) instead: every file begins with 0
    bytes, and cutting a stranger's back to them would empty it."""
    info = os.fstat(fd)
    if recorded is None or not stat.S_ISREG(info.st_mode) or info.st_size < recorded["bytes"]:
        return None
    if recorded["bytes"] == 0 and info.st_size > 0 and \
            recorded.get("file") != [info.st_dev, info.st_ino]:
        return None
    digest, offset = hashlib.sha256(), 0
    while offset < recorded["bytes"]:
        chunk = os.pread(fd, min(1 << 20, recorded["bytes"] - offset), offset)
        if not chunk:
            return None
        digest.update(chunk)
        offset += len(chunk)
    return digest if digest.hexdigest() == recorded["sha256"] else None
