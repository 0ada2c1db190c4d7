"""The driver and its worker processes speak JSON lines (no pickle).

    driver                                  worker (python -m benchmarks.worker ...)
      start ─────────────────────────────▶  build every variant, one first step each
      ◀─────────── {"event": "ready", "pid", "first_seconds", "flops", ...}
      {"cmd": "round", "seed": r} ───────▶  one sample of every variant, order shuffled by r
      ◀─────────── {"event": "round", "seconds": {variant: s per step}}
      {"cmd": "stats"} ──────────────────▶
      ◀─────────── {"event": "stats", "peak_rss_bytes", "xla_memory", "modules"}
      {"cmd": "exit"} ───────────────────▶  exits 0

A worker owns the process's standard output for these lines only: before it imports anything
that prints, :func:`take_stdout` moves file descriptor 1 onto standard error (a library's
print, torch's compile logs, XLA's C++ logs all go there) and keeps a private copy for the
protocol. The driver waits for each reply line; it never sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any


class WorkerError(RuntimeError):
    """A worker process failed or broke the protocol; the message says which and why."""


def take_stdout() -> IO[str]:
    """In a worker: a text stream for protocol lines; fd 1 (and ``sys.stdout``) now write to
    standard error."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1)


def send(stream: IO[str], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


class Worker:
    """A worker process, started by :meth:`start` (which returns once it is ready)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: str):
        self.name = name
        self._proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", *argv],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env, cwd=cwd, bufsize=1)
        self.ready = self._receive("ready")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _receive(self, event: str) -> dict[str, Any]:
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            raise WorkerError(f"the {self.name} worker exited (status {code}) before its "
                              f"{event!r} line; its error is on standard error above")
        message = json.loads(line)
        if message.get("event") == "error":
            self._proc.wait()
            raise WorkerError(f"the {self.name} worker failed: {message['message']}")
        if message.get("event") != event:
            raise WorkerError(f"the {self.name} worker sent {message.get('event')!r} where "
                              f"{event!r} was expected")
        return message

    def ask(self, command: dict[str, Any], event: str) -> dict[str, Any]:
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return self._receive(event)

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
            self._proc.wait()
